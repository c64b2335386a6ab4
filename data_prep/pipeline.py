"""From a corpus's fetched files to the files OpenNMT-py trains on.

Two stages, each skipped when its inputs and options have not changed:

1. ``tok/``: the corpus split into train / valid / test, whitespace-normalized
   and Moses-tokenized (German -> English), plus a plain-text test reference;
2. the output directory: what the models read (``train.de`` ..., word tokens or
   SentencePiece pieces), vocabularies, references, ``data.yaml`` and, last,
   ``manifest.json``, which marks the directory as complete.
"""

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import sentencepiece as spm

from data_prep.sources import CORPORA, WMT13_ARCHIVE, WMT13_MEMBERS, fetch, read_archive_members
from data_prep.text import (
    DataPrepError,
    atomic_write,
    check_parallel,
    moses_detokenize,
    moses_tokenize,
    read_lines,
    write_lines,
)

#: bump when processing changes, so that older outputs are rebuilt
PROCESSING_VERSION = 1
VOCAB_CAP = 50000  # the paper's word vocabularies of about 50K
DEFAULT_VALID_SIZE = {"ope": 2000, "wmt13": 3000}
WMT13_TRAIN_FRACTION = 0.9
SPLITS = ("train", "valid", "test")
LANGS = ("de", "en")


@dataclass(frozen=True)
class Options:
    corpus: str
    source: str
    subword: str = "none"
    vocab_size: int = 16000
    valid_size: int = 0
    max_length: int = 0
    workers: int = 0  # not part of the result

    def text_key(self, inputs):
        return {
            "version": PROCESSING_VERSION,
            "corpus": self.corpus,
            "inputs": inputs,
            "valid_size": self.valid_size,
            "max_length": self.max_length,
        }

    def key(self, inputs):
        key = self.text_key(inputs)
        key.update(subword=self.subword, vocab_cap=VOCAB_CAP)
        if self.subword == "sentencepiece":
            key["vocab_size"] = self.vocab_size
        return key


#: OpenNMT-py's logger ("onmt"; ``python -m data_prep`` sets it up with its ``init_logger``)
logger = logging.getLogger("onmt")


def log(message):
    logger.info(message)


# --------------------------------------------------------------------------- #
# Stage 1: per-corpus splitting and tokenization
# --------------------------------------------------------------------------- #
def _parallel(fetched, src_name, tgt_name):
    src, tgt = read_lines(fetched[src_name][0]), read_lines(fetched[tgt_name][0])
    check_parallel(fetched[src_name][0], src, fetched[tgt_name][0], tgt)
    return src, tgt


def _carve_valid(train, valid_size, corpus):
    de, en = train
    if valid_size >= len(de):
        raise DataPrepError(f"--valid-size {valid_size}: {corpus} has only {len(de)} training pairs")
    cut = len(de) - valid_size
    return (de[:cut], en[:cut]), (de[cut:], en[cut:])


def split_ope(fetched, opt, work):
    """Already Moses-tokenized; valid = the last ``valid_size`` pairs of train."""
    train = _parallel(fetched, "de-train-clean.200K.txt", "en-train-clean.200K.txt")
    test = _parallel(fetched, "de-val-clean.10K.txt", "en-val-clean.10K.txt")
    train, valid = _carve_valid(train, opt.valid_size, "ope")
    return {"train": train, "valid": valid, "test": test}, moses_detokenize(test[1], "en")


def split_wmt13(fetched, opt, work):
    """Europarl v7 De-En: drop pairs with an empty side, tokenize, 90% / 10% in file order."""
    archive = fetched[WMT13_ARCHIVE][0]
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        de_path, en_path = read_archive_members(archive, WMT13_MEMBERS, tmp)
        de, en = read_lines(de_path), read_lines(en_path)
        check_parallel(f"{archive}:{WMT13_MEMBERS[0]}", de, f"{archive}:{WMT13_MEMBERS[1]}", en)
    pairs = [(d, e) for d, e in zip(de, en) if d and e]
    log(f"wmt13: {len(de)} pairs, {len(de) - len(pairs)} with an empty side dropped")
    raw_de, raw_en = [d for d, _ in pairs], [e for _, e in pairs]
    del de, en, pairs
    tok_de = moses_tokenize(raw_de, "de", "tokenizing de", opt.workers)
    tok_en = moses_tokenize(raw_en, "en", "tokenizing en", opt.workers)
    cut = int(len(tok_de) * WMT13_TRAIN_FRACTION)
    train, valid = _carve_valid((tok_de[:cut], tok_en[:cut]), opt.valid_size, "wmt13")
    return {"train": train, "valid": valid, "test": (tok_de[cut:], tok_en[cut:])}, raw_en[cut:]


def split_multi30k(fetched, opt, work):
    """Raw captions: Moses-tokenize, keep the train / val / test_2016_flickr split."""
    splits, raw_test_en = {}, None
    for split, name in (("train", "train"), ("valid", "val"), ("test", "test_2016_flickr")):
        de, en = _parallel(fetched, f"{name}.de.gz", f"{name}.en.gz")
        splits[split] = (
            moses_tokenize(de, "de", f"tokenizing {name}.de", opt.workers),
            moses_tokenize(en, "en", f"tokenizing {name}.en", opt.workers),
        )
        raw_test_en = en
    return splits, raw_test_en


SPLITTERS = {"ope": split_ope, "wmt13": split_wmt13, "multi30k": split_multi30k}


def _length_filter(train, max_length):
    if not max_length:
        return train, 0
    keep = [
        (d, e) for d, e in zip(*train) if len(d.split()) <= max_length and len(e.split()) <= max_length
    ]
    return ([d for d, _ in keep], [e for _, e in keep]), len(train[0]) - len(keep)


def build_text_stage(fetched, opt, work, key):
    """``work/{split}.{de,en}`` tokenized, ``work/test.detok.en``; stamp written last."""
    stamp = work / "stamp.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("key") == key:
        log(f"{work}: tokenized splits up to date")
        return json.loads(stamp.read_text())["filtered"]
    if stamp.exists():
        stamp.unlink()
    work.mkdir(parents=True, exist_ok=True)
    splits, detok_test_en = SPLITTERS[opt.corpus](fetched, opt, work)
    splits["train"], filtered = _length_filter(splits["train"], opt.max_length)
    for split in SPLITS:
        for lang, lines in zip(LANGS, splits[split]):
            write_lines(work / f"{split}.{lang}", lines)
    write_lines(work / "test.detok.en", detok_test_en)
    with atomic_write(stamp) as handle:
        json.dump({"key": key, "filtered": filtered}, handle, indent=2)
    return filtered


# --------------------------------------------------------------------------- #
# Stage 2: model files, vocabularies, references
# --------------------------------------------------------------------------- #
def _link(src, dst):
    tmp = f"{dst}.tmp-{os.getpid()}"
    try:
        os.link(src, tmp)
    except OSError:
        with open(src, "rb") as a, open(tmp, "wb") as b:
            b.write(a.read())
    os.replace(tmp, dst)


def _train_sentencepiece(work, out, vocab_size, workers):
    """One joint unigram model for German and English, trained on train only."""
    prefix = out / f"spm.tmp-{os.getpid()}"
    try:
        spm.SentencePieceTrainer.train(
            input=[str(work / "train.de"), str(work / "train.en")],
            model_prefix=str(prefix),
            vocab_size=vocab_size,
            model_type="unigram",
            character_coverage=1.0,
            input_sentence_size=2000000,
            shuffle_input_sentence=True,
            num_threads=workers or os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as error:
        raise DataPrepError(f"sentencepiece with --vocab-size {vocab_size}: {error}") from None
    for ext in ("model", "vocab"):
        os.replace(f"{prefix}.{ext}", out / f"spm.{ext}")
    return spm.SentencePieceProcessor(model_file=str(out / "spm.model"))


def _build_onmt_vocab(out):
    """OpenNMT-py's own vocabulary counts of the training files (``onmt_build_vocab``)."""
    import onmt_lma.base.onmt_import  # noqa: F401, I001  (first: before onmt)
    import onmt.bin.build_vocab  # here: preparing text needs no torch until the vocabularies are counted
    import onmt.opts
    from onmt.utils.parse import ArgumentParser

    with tempfile.TemporaryDirectory(dir=out) as tmp:
        config = Path(tmp) / "vocab.yaml"
        config.write_text(
            "data:\n"
            f"  corpus_1: {{path_src: {out / 'train.de'}, path_tgt: {out / 'train.en'}}}\n"
        )
        targets = {lang: Path(tmp) / f"vocab.{lang}" for lang in LANGS}
        parser = ArgumentParser()
        onmt.opts.data_prepare_opts(parser, build_vocab_only=True)
        onmt.bin.build_vocab.build_vocab_main(parser.parse_args(
            ["-config", str(config), "-n_sample", "-1", "-save_data", tmp,
             "-src_vocab", str(targets["de"]), "-tgt_vocab", str(targets["en"])]))
        for lang in LANGS:
            os.replace(targets[lang], out / f"vocab.{lang}")


def build_model_files(work, out, opt):
    if opt.subword == "none":
        for split in SPLITS:
            for lang in LANGS:
                _link(work / f"{split}.{lang}", out / f"{split}.{lang}")
    else:
        log(f"training a joint SentencePiece model, {opt.vocab_size} pieces")
        sp = _train_sentencepiece(work, out, opt.vocab_size, opt.workers)
        for split in SPLITS:
            for lang in LANGS:
                lines = read_lines(work / f"{split}.{lang}")
                write_lines(out / f"{split}.{lang}", (" ".join(p) for p in sp.encode(lines, out_type=str)))
    _link(work / "test.en", out / "test.ref.tok.en")
    _link(work / "test.detok.en", out / "test.ref.detok.en")
    log("building OpenNMT-py vocabularies")
    _build_onmt_vocab(out)
    with atomic_write(out / "data.yaml") as handle:
        handle.write(
            f"# {opt.corpus} German->English, made by: python -m data_prep {opt.corpus} --out {out}"
            f" --subword {opt.subword}\n"
            f"src_vocab: {out / 'vocab.de'}\n"
            f"tgt_vocab: {out / 'vocab.en'}\n"
            f"src_vocab_size: {VOCAB_CAP}\n"
            f"tgt_vocab_size: {VOCAB_CAP}\n"
            "data:\n"
            "  corpus_1:\n"
            f"    path_src: {out / 'train.de'}\n"
            f"    path_tgt: {out / 'train.en'}\n"
            "  valid:\n"
            f"    path_src: {out / 'valid.de'}\n"
            f"    path_tgt: {out / 'valid.en'}\n"
        )


def _count_lines(path):
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def output_names(opt):
    names = [f"{split}.{lang}" for split in SPLITS for lang in LANGS]
    names += ["test.ref.tok.en", "test.ref.detok.en", "vocab.de", "vocab.en", "data.yaml"]
    if opt.subword == "sentencepiece":
        names += ["spm.model", "spm.vocab"]
    return names


def changed_outputs(out, opt, manifest):
    """What of ``out`` no longer is what ``manifest`` recorded: missing files, other sizes or line counts."""
    changed = []
    sizes, lines = manifest.get("output_bytes", {}), manifest.get("outputs", {})
    for name in output_names(opt):
        path = out / name
        if not path.exists():
            changed.append(f"{name} missing")
        elif name in sizes and path.stat().st_size != sizes[name]:
            changed.append(f"{name} has {path.stat().st_size} bytes, {sizes[name]} recorded")
        elif name in lines and _count_lines(path) != lines[name]:
            changed.append(f"{name} has {_count_lines(path)} lines, {lines[name]} recorded")
    return changed


def prepare(opt, out_dir):
    """Prepare ``opt.corpus`` into ``out_dir``; returns the manifest."""
    corpus = CORPORA[opt.corpus]
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"

    fetched = fetch(corpus, opt.source, out / "download")
    inputs = {name: digest for name, (_, digest) in fetched.items()}
    key = opt.key(inputs)
    if manifest_path.exists():
        previous = json.loads(manifest_path.read_text())
        if previous.get("key") == key:
            changed = changed_outputs(out, opt, previous)
            if not changed:
                log(f"{out}: up to date ({manifest_path})")
                return previous
            log(f"{out}: rebuilding, outputs differ from {manifest_path}: {'; '.join(changed)}")
        manifest_path.unlink()  # rebuilding: the directory no longer looks finished

    filtered = build_text_stage(fetched, opt, out / "tok", opt.text_key(inputs))
    build_model_files(out / "tok", out, opt)

    manifest = {
        "corpus": opt.corpus,
        "description": corpus.description,
        "direction": "de->en",
        "options": {
            k: v
            for k, v in asdict(opt).items()
            if k != "workers" and (k != "vocab_size" or opt.subword == "sentencepiece")
        },
        "source": opt.source,
        "inputs": {name: {"sha256": digest, "bytes": path.stat().st_size} for name, (path, digest) in fetched.items()},
        "train_pairs_dropped_by_length": filtered,
        "outputs": {n: _count_lines(out / n) for n in output_names(opt) if n != "spm.model"},
        # data.yaml is left out: it names the folder, and a moved copy rewrites it
        "output_bytes": {n: (out / n).stat().st_size for n in output_names(opt) if n != "data.yaml"},
        "key": key,
    }
    with atomic_write(manifest_path) as handle:
        json.dump(manifest, handle, indent=2)
        handle.write("\n")
    log(f"{out}: done, " + ", ".join(f"{s} {manifest['outputs'][s + '.de']}" for s in SPLITS) + " pairs")
    return manifest
