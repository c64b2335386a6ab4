"""Test sets: a prepared corpus's test split, or raw files put through the corpus's steps; and the check that
a model's vocabularies fit the test set before anything is translated.
"""

import dataclasses
import json
from pathlib import Path

import sentencepiece as spm

from data_prep.text import moses_tokenize, normalize_whitespace
from onmt_lma.base.checkpoint import load as load_checkpoint
from onmt_lma.base.errors import UserError
from onmt_lma.deploy.manifest import read_manifest, read_vocabulary
from onmt_lma.deploy.text import trained_corpus


class EvaluationInputError(UserError, ValueError):
    """Test files, checkpoints or options that cannot be evaluated; the message names the file."""


@dataclasses.dataclass
class TestSet:
    """A test set in the model's input form (``src``, ``tgt``: files) and its references (lists of lines)."""

    name: str
    corpus_dir: Path  # whose steps made ``src`` / ``tgt`` and undo the output's (SentencePiece, Moses)
    src: Path
    tgt: Path
    ref_detok: list
    ref_tok: list  # or None: no tokenized BLEU
    files: dict  # what was read, by role: {"src": path, "ref": path, ...}


def _lines(path, role):
    path = Path(path)
    if not path.is_file():
        raise EvaluationInputError(f"-{role} {path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise EvaluationInputError(f"-{role} {path}: not valid UTF-8 ({error.reason} at byte {error.start})") from None
    if not lines:
        raise EvaluationInputError(f"-{role} {path} is empty")
    blank = next((number for number, line in enumerate(lines, 1) if not line.strip()), None)
    if role == "src" and blank:
        raise EvaluationInputError(f"-src {path}, line {blank} is empty: every test sentence needs a source")
    return lines


def _check_corpus(corpus_dir, names):
    corpus_dir = Path(corpus_dir)
    for name in names:
        if not (corpus_dir / name).is_file():
            raise EvaluationInputError(f"{corpus_dir / name} is missing: prepare the corpus with python -m data_prep")
    return corpus_dir


def prepared_test_set(corpus_dir):
    """The test split of a corpus made by ``python -m data_prep``."""
    corpus_dir = _check_corpus(corpus_dir, ("test.de", "test.en", "test.ref.tok.en", "test.ref.detok.en",
                                            "manifest.json"))
    return TestSet(name=f"{json.loads((corpus_dir / 'manifest.json').read_text())['corpus']} test",
                   corpus_dir=corpus_dir, src=corpus_dir / "test.de", tgt=corpus_dir / "test.en",
                   ref_detok=_lines(corpus_dir / "test.ref.detok.en", "ref"),
                   ref_tok=_lines(corpus_dir / "test.ref.tok.en", "ref_tok"),
                   files={"corpus": corpus_dir})


def checkpoint_corpus(checkpoint):
    """The prepared corpus whose vocabularies ``checkpoint`` was trained with (None if not one of data_prep);
    for an export folder, that of the checkpoint beside it that it was exported from."""
    if Path(checkpoint).is_dir():
        exported_from = Path(checkpoint).parent / read_manifest(checkpoint)["checkpoint"]
        return checkpoint_corpus(exported_from) if exported_from.is_file() else None
    return trained_corpus(load_checkpoint(checkpoint)["opt"])


def raw_test_set(src, ref, ref_tok, corpus_dir, workdir):
    """Raw ``src``/``ref`` put through the corpus's steps (Moses ``-a``, escaping; SentencePiece if it has one)."""
    corpus_dir = _check_corpus(corpus_dir, ("manifest.json",))
    sources, refs = _lines(src, "src"), _lines(ref, "ref")
    refs_tok = _lines(ref_tok, "ref_tok") if ref_tok else None
    for role, lines, path in (("ref", refs, ref), ("ref_tok", refs_tok, ref_tok)):
        if lines is not None and len(lines) != len(sources):
            raise EvaluationInputError(f"-{role} {path} has {len(lines)} lines, -src {src} has {len(sources)}")
    src_tok = moses_tokenize([normalize_whitespace(line) for line in sources], "de", desc="tokenizing -src")
    tgt_tok = refs_tok or moses_tokenize([normalize_whitespace(line) for line in refs], "en", desc="tokenizing -ref")
    spm_model = corpus_dir / "spm.model"
    if spm_model.is_file():
        sp = spm.SentencePieceProcessor(model_file=str(spm_model))
        src_tok, tgt_tok = ([" ".join(pieces) for pieces in sp.encode(lines, out_type=str)]
                            for lines in (src_tok, tgt_tok))
    workdir = Path(workdir)
    for name, lines in (("src", src_tok), ("tgt", tgt_tok)):
        (workdir / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    files = {"src": Path(src), "ref": Path(ref), "corpus": corpus_dir}
    if ref_tok:
        files["ref_tok"] = Path(ref_tok)
    return TestSet(name=Path(src).name, corpus_dir=corpus_dir, src=workdir / "src", tgt=workdir / "tgt",
                   ref_detok=refs, ref_tok=refs_tok, files=files)


#: more unknown test tokens than this means the checkpoint was trained on another corpus or subword scheme
MAX_UNKNOWN_SHARE = 0.5


class CorpusMismatchError(UserError, RuntimeError):
    """A checkpoint whose vocabularies do not fit the corpus it is evaluated on."""


def model_vocabularies(model):
    """``{"src": tokens, "tgt": tokens}`` of a checkpoint or an onmt_lma_export folder."""
    if Path(model).is_dir():
        return {side: read_vocabulary(Path(model) / f"{side}.vocab.json") for side in ("src", "tgt")}
    return load_checkpoint(model)["vocab"]


def check_vocabulary(checkpoint, test):
    """Refuse, before translating, a model whose source or target vocabulary misses most test tokens.

    A word-level model on a SentencePiece corpus (or the reverse, or another
    corpus) translates almost everything as unknown and would otherwise write a
    complete-looking result with BLEU near 0.
    """
    vocab = model_vocabularies(checkpoint)
    for side, path in (("src", test.src), ("tgt", test.tgt)):
        known = set(vocab[side])
        tokens = Path(path).read_text(encoding="utf-8").split()
        unknown = sum(token not in known for token in tokens)
        if tokens and unknown / len(tokens) > MAX_UNKNOWN_SHARE:
            raise CorpusMismatchError(
                f"checkpoint {checkpoint} does not fit test set {test.name} (steps of corpus {test.corpus_dir}): "
                f"{unknown} of {len(tokens)} tokens of its {'source' if side == 'src' else 'reference'} are not in "
                f"its {'source' if side == 'src' else 'target'} vocabulary; was it trained on this corpus, with the "
                "same subword scheme?")
