"""``onmt_lma_evaluate``: evaluate checkpoints on a test set; one JSON file per checkpoint.

    onmt_lma_evaluate -model CK [CK ...] -corpus DIR [-out FILE|DIR] [-beam_size 5] [-gpu 0]
    onmt_lma_evaluate -model CK [CK ...] -src test.de -ref test.en [-ref_tok test.tok.en] [-corpus DIR] ...

``-corpus DIR`` alone: the test split of a corpus prepared by ``python -m
data_prep``.  ``-src``/``-ref``: any raw (untokenized) test set; the steps of
the model's corpus are applied to it (Moses tokenization, ``tokenizer.perl -a``
with escaping, then the corpus's SentencePiece model if it has one), read from
the prepared corpus ``-corpus`` names or, without it, the one whose
vocabularies the checkpoint was trained with.  The output is decoded and
detokenized back to plain text before scoring.

Fields (Xu et al. 2020, translation experiments):
  * ``bleu``: sacreBLEU on detokenized text against the plain-text reference,
    with its signature; ``chrf``: sacreBLEU's chrF (character 6-grams, beta 2),
    with its signature; ``bleu_tok``: BLEU on Moses-tokenized text against the
    tokenized reference (``test.ref.tok.en``, or ``-ref_tok``; null without one)
    with sacreBLEU's ``tokenize=none``, which computes what Moses
    ``multi-bleu.perl`` does (the paper's number);
  * ``ppl``: test perplexity of the gold references (teacher-forced), per
    target token of the model's vocabulary, end of sentence included;
  * ``params``, ``size_mb`` (checkpoint on disk);
  * ``speed``: beam-5 translation of the test set one sentence at a time
    (sentences/s, target tokens/s);
  * ``memory``: while translating one sentence at a time, in a fresh process:
    on CUDA ``torch.cuda.max_memory_allocated`` (as the paper); on CPU the
    process's peak resident memory from loading the model to the end of
    translation (Linux ``VmHWM``, reset just before loading) minus its resident
    memory before loading, i.e. model + decoding memory without the
    Python/PyTorch runtime.
"""

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sacrebleu

from onmt_lma import plugin  # noqa: F401  (first: silences onmt's import warnings)
from onmt.utils.logging import logger  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _translate_opts(checkpoint, src, output, beam, gpu, batch_size=1, fixed_length=None):
    from onmt_lma.bin.translate import get_parser
    from onmt.utils.parse import ArgumentParser

    args = ["-model", str(checkpoint), "-src", str(src), "-output", str(output),
            "-beam_size", str(beam), "-batch_size", str(batch_size), "-batch_type", "sents",
            "-max_length", "250", "-gpu", str(gpu)]
    if fixed_length:  # every hypothesis exactly this long: equal decoding work across models
        args += ["-min_length", str(fixed_length), "-max_length", str(fixed_length)]
    opt = get_parser().parse_args(args)
    ArgumentParser.validate_translate_opts(opt)
    ArgumentParser._get_all_transform_translate(opt)
    ArgumentParser._validate_transforms_opts(opt)
    ArgumentParser.validate_translate_opts_dynamic(opt)
    return opt


def _status_mb(field):
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in MiB (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss():
    """Reset the peak resident size (VmHWM) to the current one (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def translate_worker(checkpoint, src, output, beam, gpu, fixed_length=None, batch_size=1, chunk_lines=50):
    """Run in a fresh process: translate ``batch_size`` sentences at a time; speed and peak memory.

    The source goes to the engine a chunk of lines at a time, so that a
    progress bar with an ETA can show; the time counts translation only.
    """
    from onmt.inference_engine import InferenceEnginePY
    import torch
    from tqdm import tqdm

    lines = Path(src).read_text(encoding="utf-8").splitlines()
    opt = _translate_opts(checkpoint, src, output, beam, gpu, batch_size, fixed_length=fixed_length)
    before = _status_mb("VmRSS")
    _reset_peak_rss()
    if gpu >= 0:
        torch.cuda.reset_peak_memory_stats()
    engine = InferenceEnginePY(opt)
    seconds, hyps = 0.0, []
    with tqdm(total=len(lines), desc=f"translating {Path(src).name}", unit="sent", mininterval=5,
              file=sys.stderr) as progress:
        for first in range(0, len(lines), chunk_lines):
            chunk = lines[first:first + chunk_lines]
            start = time.perf_counter()
            _, predictions = engine.infer_list(chunk)
            seconds += time.perf_counter() - start
            hyps += [n_best[0] for n_best in predictions]
            progress.update(len(chunk))
    engine.terminate()
    Path(output).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    if gpu >= 0:
        memory = {"device": "cuda", "measure": "torch.cuda.max_memory_allocated",
                  "peak_mb": torch.cuda.max_memory_allocated() / 2**20}
    else:
        peak = _status_mb("VmHWM")
        memory = {"device": "cpu", "measure": "peak resident memory (VmHWM) minus resident memory before model load",
                  "peak_mb": peak - before, "process_peak_rss_mb": peak}
    return {"seconds": seconds, "memory": memory}


def gold_perplexity(checkpoint, src, tgt, gpu, batch_size=32):
    """Perplexity of the references under the model (teacher forcing), per target token.

    Uses the translator's private ``_run_encoder``, ``_score_target`` and
    ``_tgt_pad_idx`` (OpenNMT-py 3.5.1; the list is in :mod:`onmt_lma.plugin`).
    """
    from onmt.constants import CorpusTask
    from onmt.inference_engine import InferenceEnginePY
    from onmt.inputters.dynamic_iterator import build_dynamic_dataset_iter
    import torch

    opt = _translate_opts(checkpoint, src, os.devnull, 1, gpu, batch_size)
    engine = InferenceEnginePY(opt)
    translator = engine.translator
    src_lines = Path(src).read_text(encoding="utf-8").splitlines()
    tgt_lines = Path(tgt).read_text(encoding="utf-8").splitlines()
    batches = build_dynamic_dataset_iter(
        opt, engine.transforms_cls, engine.vocabs, task=CorpusTask.INFER,
        src=src_lines, tgt=tgt_lines, device_id=engine.device_id,
    )
    total_log_prob, tokens = 0.0, 0
    from tqdm import tqdm

    with torch.no_grad(), tqdm(total=len(src_lines), desc="perplexity", unit="sent", mininterval=5) as progress:
        for batch, _ in batches:
            progress.update(batch["src"].size(0))
            src_t, enc_final_hs, enc_out, src_len = translator._run_encoder(batch)
            translator.model.decoder.init_state(src_t, enc_out, enc_final_hs)
            scores, _ = translator._score_target(batch, enc_out, src_len, None)
            total_log_prob += scores.sum().item()
            tokens += batch["tgt"][:, 1:, 0].ne(translator._tgt_pad_idx).sum().item()
    engine.terminate()
    return math.exp(-total_log_prob / tokens), tokens


def _score(metric, hyps, refs):
    score = metric.corpus_score(hyps, [refs])
    return {"score": score.score, "signature": str(metric.get_signature()), "text": str(score)}


def text_scores(hyp_tok, hyp_detok, ref_tok, ref_detok):
    """Detokenized sacreBLEU and chrF (with signatures); tokenized BLEU (multi-bleu.perl) where ``ref_tok``."""
    return {
        "bleu": _score(sacrebleu.BLEU(), hyp_detok, ref_detok),
        "chrf": _score(sacrebleu.CHRF(), hyp_detok, ref_detok),
        "bleu_tok": _score(sacrebleu.BLEU(tokenize="none", force=True), hyp_tok, ref_tok) if ref_tok else None,
    }


def postprocess(lines, corpus_dir):
    """Model output -> (Moses-tokenized, detokenized) text."""
    from sacremoses import MosesDetokenizer

    spm_model = Path(corpus_dir) / "spm.model"
    if spm_model.exists():
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(spm_model))
        tokenized = [sp.decode(line.split()) for line in lines]
    else:
        tokenized = list(lines)
    detokenizer = MosesDetokenizer(lang="en")
    return tokenized, [detokenizer.detokenize(line.split()) for line in tokenized]


#: more unknown test tokens than this means the checkpoint was trained on another corpus or subword scheme
MAX_UNKNOWN_SHARE = 0.5


class CorpusMismatchError(RuntimeError):
    """A checkpoint whose vocabularies do not fit the corpus it is evaluated on."""


def check_vocabulary(checkpoint, test):
    """Refuse, before translating, a checkpoint whose source or target vocabulary misses most test tokens.

    A word-level model on a SentencePiece corpus (or the reverse, or another
    corpus) translates almost everything as unknown and would otherwise write a
    complete-looking result with BLEU near 0.
    """
    from onmt_lma.checkpoint import checkpoint_loading
    import torch

    with checkpoint_loading(str(checkpoint)):
        vocab = torch.load(checkpoint, map_location="cpu")["vocab"]
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


def _git_commit():
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def model_facts(checkpoint):
    from onmt_lma.checkpoint import checkpoint_loading
    import torch

    with checkpoint_loading(str(checkpoint)):
        ckpt = torch.load(checkpoint, map_location="cpu")
    from onmt_lma.average import checkpoint_steps

    from onmt_lma.quantize import dequantize_checkpoint

    info = ckpt.get("onmt_lma") or {}
    quantized = ("int8" if "int8" in info else f"{info['low_bit']['bits']}-bit" if "low_bit" in info
                 else f"{ckpt['opt'].quant_bits}-bit" if getattr(ckpt["opt"], "quant_bits", None) else None)
    dequantize_checkpoint(ckpt)  # parameters counted as the model has them
    opt = ckpt["opt"]
    steps = checkpoint_steps(ckpt)
    tensors = list(ckpt["model"].values()) + list((ckpt.get("generator") or {}).values())
    learned_lma = learned_lma_layers(ckpt["model"]) if opt.pos_ffn_activation_fn == "lma" else None
    params = sum(t.numel() for t in tensors if t.is_floating_point())
    return {
        "activation": opt.pos_ffn_activation_fn,
        "lma_segments": getattr(opt, "lma_segments", None),
        "lma_continuous": getattr(opt, "lma_continuous", False),
        "lma_lr_scale": getattr(opt, "lma_lr_scale", 1.0),
        "learning_rate": getattr(opt, "learning_rate", None),
        "hidden_size": opt.hidden_size,
        "enc_layers": opt.enc_layers,
        "dec_layers": opt.dec_layers,
        "transformer_ff": opt.transformer_ff,
        "seed": getattr(opt, "seed", None),
        "kd_teacher": getattr(opt, "kd_teacher", None),
        "train_steps": max(steps) if steps else None,
        "averaged_steps": steps if len(steps) > 1 else None,
        "learned_lma": learned_lma,
        "quantized": quantized,
    }, params


def learned_lma_layers(state):
    """Each LMA layer's learned lines and running statistics, by module name.

    ``{"encoder.transformer.0.feed_forward.activation": {"alpha": [...],
    "beta": [...], "running_mean": m, "running_std": s}, ...}``: what the
    layer computes in evaluation mode (the paper's Eq. 2 with the running
    statistics).  A continuous LMA's intercepts are derived from its slopes.
    """
    from onmt_lma.activations import continuous_intercepts

    layers = {}
    for key in state:
        if key.endswith(".activation.alpha"):
            name = key[: -len(".alpha")]
            alpha = state[f"{name}.alpha"].double()
            mean, std = state[f"{name}.running_mean"].double(), state[f"{name}.running_std"].double()
            beta = state.get(f"{name}.beta")
            beta = continuous_intercepts(alpha, mean, std) if beta is None else beta.double()
            layers[name] = {"alpha": alpha.tolist(), "beta": beta.tolist(),
                            "running_mean": mean.item(), "running_std": std.item()}
    return layers


# --------------------------------------------------------------------------- #
# Test sets: a prepared corpus's test split, or raw files with the corpus's steps
# --------------------------------------------------------------------------- #
class EvaluationInputError(ValueError):
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
    """The prepared corpus whose vocabularies ``checkpoint`` was trained with (None if not one of data_prep)."""
    from onmt_lma.checkpoint import checkpoint_loading
    import torch

    with checkpoint_loading(str(checkpoint)):
        opt = torch.load(checkpoint, map_location="cpu")["opt"]
    folder = Path(getattr(opt, "src_vocab", None) or ".").parent
    return folder if (folder / "manifest.json").is_file() else None


def raw_test_set(src, ref, ref_tok, corpus_dir, workdir):
    """Raw ``src``/``ref`` put through the corpus's steps (Moses ``-a``, escaping; SentencePiece if it has one)."""
    from data_prep.text import moses_tokenize, normalize_whitespace

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
        import sentencepiece as spm

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


def portable(path, base=None):
    """``path`` relative to ``base`` (default: the current directory): no machine's absolute paths in results."""
    return os.path.relpath(os.path.abspath(path), os.path.abspath(base or os.curdir))


def evaluation_inputs(checkpoint, test):
    """What a result depends on: the checkpoint's and the test files' sha256, the prepared corpus's key."""
    from onmt_lma.files import sha256_of

    manifest = json.loads((test.corpus_dir / "manifest.json").read_text())
    inputs = {"checkpoint_sha256": sha256_of(checkpoint), "corpus_key": manifest.get("key")}
    inputs.update({f"{role}_sha256": sha256_of(path) for role, path in test.files.items() if role != "corpus"})
    return inputs


def kept_result(out, checkpoint, test):
    """True when ``out`` holds a result of these very inputs (or one too old to say): keep it."""
    recorded = json.loads(Path(out).read_text()).get("inputs")
    if recorded is None:
        return True
    now = evaluation_inputs(checkpoint, test)
    changed = [key for key in now if recorded.get(key) != now[key]]
    if changed:
        logger.info("%s was made from other inputs (%s changed): evaluating again", out, ", ".join(changed))
        return False
    return True


def evaluate(checkpoint, corpus_dir, out, beam=5, gpu=-1, batch_size=1, test=None):
    """Evaluate ``checkpoint`` on ``test`` (default: the test split of ``corpus_dir``); write ``out``."""
    checkpoint, out = Path(checkpoint), Path(out)
    test = test or prepared_test_set(corpus_dir)
    if not checkpoint.is_file():
        raise EvaluationInputError(f"checkpoint {checkpoint} does not exist")
    manifest = json.loads((test.corpus_dir / "manifest.json").read_text())
    check_vocabulary(checkpoint, test)
    started = time.time()
    sources = test.src.read_text(encoding="utf-8").splitlines()
    if len(test.ref_detok) != len(sources):
        raise EvaluationInputError(f"{test.name}: {len(test.ref_detok)} references for {len(sources)} sources")

    with tempfile.TemporaryDirectory() as tmp:
        hyp_path = Path(tmp) / "hyp"
        logger.info("%s: translating %s (%d sentences, beam %d)", checkpoint, test.name, len(sources), beam)
        worker = subprocess.run(
            [sys.executable, "-m", "onmt_lma.evaluate", "--worker", str(checkpoint), str(test.src),
             str(hyp_path), "--beam", str(beam), "--gpu", str(gpu), "--batch-size", str(batch_size)],
            stdout=subprocess.PIPE, text=True,  # its progress and errors go to our stderr
        )
        if worker.returncode != 0:
            raise RuntimeError(f"translation of {test.name} with {checkpoint} failed: see the error above")
        run = json.loads(worker.stdout.strip().splitlines()[-1])
        hyps = hyp_path.read_text(encoding="utf-8").splitlines()

    if len(hyps) != len(sources):
        raise RuntimeError(f"{len(hyps)} translations for {len(sources)} test sentences")
    hyp_tok, hyp_detok = postprocess(hyps, test.corpus_dir)
    scores = text_scores(hyp_tok, hyp_detok, test.ref_tok, test.ref_detok)
    ppl, ppl_tokens = gold_perplexity(checkpoint, test.src, test.tgt, gpu)
    model, params = model_facts(checkpoint)
    if model["kd_teacher"]:
        model["kd_teacher"] = portable(model["kd_teacher"])
    target_tokens = sum(len(h.split()) for h in hyps)

    result = {
        "checkpoint": portable(checkpoint),
        "run_dir": portable(checkpoint.parent),
        "corpus": manifest["corpus"],
        "subword": manifest["options"]["subword"],
        "test": {"name": test.name, **{role: portable(path) for role, path in test.files.items()}},
        "test_sentences": len(sources),
        "model": model,
        "params": params,
        "size_mb": checkpoint.stat().st_size / 2**20,
        **scores,
        "ppl": ppl,
        "ppl_tokens": ppl_tokens,
        "beam": beam,
        "speed": {
            "batch": "one sentence at a time" if batch_size == 1 else f"{batch_size} sentences at a time",
            "sentences_per_s": len(hyps) / run["seconds"],
            "target_tokens_per_s": target_tokens / run["seconds"],
            "seconds": run["seconds"],
        },
        "memory": run["memory"],
        "inputs": evaluation_inputs(checkpoint, test),
        "commit": _git_commit(),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "evaluated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "evaluation_seconds": time.time() - started,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    # each file under a temporary name, renamed when complete; the JSON last: it marks the result done
    for path, text in ((out.parent / (out.stem + ".hyp.detok.en"), "\n".join(hyp_detok) + "\n"),
                       (out, json.dumps(result, indent=2) + "\n")):
        partial = path.with_name(path.name + ".tmp")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    return result


# --------------------------------------------------------------------------- #
# The command
# --------------------------------------------------------------------------- #
def get_parser():
    import onmt.opts

    from onmt_lma.opts import CommandParser, int_type

    parser = CommandParser(prog="onmt_lma_evaluate", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    onmt.opts.config_opts(parser)
    group = parser.add_argument_group("Evaluation (onmt-lma)")
    group.add("--model", "-model", dest="models", nargs="+", required=True, help="checkpoint(s) to evaluate")
    group.add("--corpus", "-corpus", help="prepared corpus (python -m data_prep): its test split, or, with -src, "
              "only its steps (tokenization, subwords); default with -src: the checkpoint's own corpus")
    group.add("--src", "-src", help="raw source test file (German), one sentence a line")
    group.add("--ref", "-ref", help="raw reference (English), line-aligned with -src")
    group.add("--ref_tok", "-ref_tok", help="Moses-tokenized reference, for tokenized (multi-bleu.perl) BLEU")
    group.add("--out", "-out", help="result JSON (one -model) or folder (several); default: beside each checkpoint, "
              "CK.eval.json (-corpus test split) or CK.<src name>.eval.json")
    group.add("--beam_size", "-beam_size", "-beam", type=int_type("an integer >= 1", lambda n: n >= 1), default=5,
              help="beam size (paper: 5)")
    group.add("--gpu", "-gpu", type=int, default=-1, help="CUDA device, -1 for CPU")
    group.add("--eval_batch_size", "-eval_batch_size", type=int_type("an integer >= 1", lambda n: n >= 1),
              default=1, help="sentences translated at a time (default 1: the paper's speed measure)")
    group.add("--int8", "-int8", action="store_true",
              help="evaluate each checkpoint's int8 version (onmt_lma_quantize -embeddings, written beside it as "
              "CK.int8.pt and kept)")
    group.add("--force", "-force", action="store_true", help="replace existing results")
    group.add("--log_file", "-log_file", default="", help="also log to this file")
    return parser


def result_paths(models, test_name, out):
    """Where each checkpoint's JSON goes (refusing two checkpoints that would share one)."""
    suffix = ".eval.json" if test_name is None else f".{test_name}.eval.json"
    if out and len(models) == 1 and not Path(out).is_dir():
        return [Path(out)]
    paths = [Path(out) / (Path(m).name + suffix) if out else Path(str(m) + suffix) for m in models]
    clash = next((p for p in paths if paths.count(p) > 1), None)
    if clash:
        raise EvaluationInputError(f"two -model checkpoints would both write {clash}: give them different names, "
                                   "or evaluate them in separate calls with -out")
    return paths


def summary_table(rows):
    """Side-by-side table of results (markdown), one row per checkpoint."""
    lines = ["| checkpoint | activation | BLEU | chrF | tok. BLEU | ppl | sent/s | memory MB | params | size MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model, r in rows:
        tok = f"{r['bleu_tok']['score']:.2f}" if r.get("bleu_tok") else "–"
        lines.append(f"| {model} | {r['model']['activation']} | {r['bleu']['score']:.2f} | {r['chrf']['score']:.2f} "
                     f"| {tok} | {r['ppl']:.2f} | {r['speed']['sentences_per_s']:.1f} | "
                     f"{r['memory']['peak_mb']:.0f} | {r['params'] / 1e6:.2f} M | {r['size_mb']:.1f} |")
    signatures = {r["bleu"]["signature"] for _, r in rows} | {r["chrf"]["signature"] for _, r in rows}
    return "\n".join(lines + [""] + sorted(signatures))


def int8_version(model, force=False):
    """``CK.int8.pt`` beside ``CK`` (made by onmt_lma_quantize -embeddings unless it is there)."""
    from onmt_lma import quantize

    out = Path(model).with_suffix(".int8.pt")
    if force or not out.is_file():
        try:
            quantize.main(["-model", str(model), "-output", str(out), "-embeddings"])
        except SystemExit:  # its error is printed already
            raise EvaluationInputError(f"-int8: {model} could not be quantized (see the error above)") from None
    return str(out)


def run_command(opt):
    from onmt_lma.checkpoint import CheckpointError

    if (opt.src is None) != (opt.ref is None):
        raise EvaluationInputError("-src and -ref go together (a raw test set), or neither (-corpus's test split)")
    if opt.src is None and opt.corpus is None:
        raise EvaluationInputError("give -corpus DIR (its test split) or -src FILE -ref FILE (any raw test set)")
    if opt.ref_tok and opt.src is None:
        raise EvaluationInputError("-ref_tok goes with -src/-ref (a prepared corpus has its own)")
    for model in opt.models:
        if not Path(model).is_file():
            raise EvaluationInputError(f"-model {model}: no such checkpoint")
    if opt.int8:
        opt.models = [int8_version(model, opt.force) for model in opt.models]
    paths = result_paths(opt.models, None if opt.src is None else Path(opt.src).name, opt.out)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tests, corpora = {}, {}
        for model, out in zip(opt.models, paths):
            corpus = corpora[model] = opt.corpus if opt.src is None else (opt.corpus or checkpoint_corpus(model))
            if corpus is None:
                raise EvaluationInputError(
                    f"-model {model} was not trained on a corpus prepared by python -m data_prep: name the prepared "
                    "corpus whose tokenization and subwords apply with -corpus DIR")
            key = Path(corpus).resolve()
            if key not in tests:  # the raw files are tokenized once per corpus
                if opt.src is None:
                    tests[key] = prepared_test_set(corpus)
                else:
                    folder = Path(tmp) / str(len(tests))
                    folder.mkdir()
                    tests[key] = raw_test_set(opt.src, opt.ref, opt.ref_tok, corpus, folder)
            test = tests[key]
            check_vocabulary(model, test)  # every checkpoint refused before any translation
        for model, out in zip(opt.models, paths):
            corpus = corpora[model]
            test = tests[Path(corpus).resolve()]
            if out.exists() and not opt.force and kept_result(out, model, test):
                logger.info("%s exists, made from these inputs: kept (replace it with -force)", out)
                result = json.loads(out.read_text())
            else:
                try:
                    result = evaluate(model, corpus, out, opt.beam_size, opt.gpu, opt.eval_batch_size, test=test)
                except CheckpointError as error:
                    raise EvaluationInputError(str(error)) from None
                logger.info("%s: BLEU %.2f, chrF %.2f, ppl %.2f, %.1f sent/s, memory %.0f MB", out,
                            result["bleu"]["score"], result["chrf"]["score"], result["ppl"],
                            result["speed"]["sentences_per_s"], result["memory"]["peak_mb"])
            rows.append((model, result))
    print(summary_table(rows))
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # internal: python -m onmt_lma.evaluate --worker CKPT SRC OUT_HYP ...
        worker = argparse.ArgumentParser(prog="python -m onmt_lma.evaluate --worker")
        for name in ("checkpoint", "src", "out_hyp"):
            worker.add_argument(name)
        worker.add_argument("--beam", type=int, default=5)
        worker.add_argument("--gpu", type=int, default=-1)
        worker.add_argument("--batch-size", type=int, default=1)
        worker.add_argument("--fixed-length", type=int)
        args = worker.parse_args(argv[1:])
        print(json.dumps(translate_worker(args.checkpoint, args.src, args.out_hyp, args.beam, args.gpu,
                                          args.fixed_length, args.batch_size)))
        return
    from onmt.utils.logging import init_logger

    from onmt_lma.checkpoint import CheckpointError

    parser = get_parser()
    opt = parser.parse_args(argv)
    init_logger(opt.log_file)
    try:
        run_command(opt)
    except (EvaluationInputError, CorpusMismatchError, CheckpointError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
