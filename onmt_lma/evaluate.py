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
  * ``params``, ``size_mb`` (checkpoint on disk; with ``-engine onnx`` the
    graphs used, vocabularies and manifest);
  * ``speed``: beam-5 translation of the test set one sentence at a time
    (sentences/s, target tokens/s);
  * ``memory``: while translating one sentence at a time, in a fresh process:
    on CUDA ``torch.cuda.max_memory_allocated`` (as the paper); on CPU the
    process's peak resident memory from loading the model to the end of
    translation (Linux ``VmHWM``, reset just before loading) minus its resident
    memory before loading, i.e. model + decoding memory without the
    Python/PyTorch runtime.

``-engine onnx`` evaluates the ONNX graphs on ONNX Runtime (:mod:`onmt_lma.runtime`,
CPU): ``-model`` takes ``onmt_lma_export`` folders, or checkpoints, exported once
beside them as ``CK.onnx/`` (float32 and int8 graphs); with ``-int8`` the int8
graphs (ONNX Runtime's dynamic quantization) are evaluated, written
``CK.onnx.int8.eval.json``.  Perplexity then comes from the decoder step's
log-probabilities of the gold tokens (:meth:`OnnxTranslator.score`).
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


def _translate_opts(checkpoint, src, output, beam, gpu, batch_size=1, fixed_length=None, batch_type="sents"):
    from onmt_lma.bin.translate import get_parser
    from onmt.utils.parse import ArgumentParser

    args = ["-model", str(checkpoint), "-src", str(src), "-output", str(output),
            "-beam_size", str(beam), "-batch_size", str(batch_size), "-batch_type", batch_type,
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


def _onnx_translate(folder, src, beam, batch_size, int8):
    """The ONNX engine on ``folder`` and a function translating a list of lines (best hypothesis each) with
    onmt_lma_translate's defaults, as the PyTorch engine is run here (``-max_length 250``)."""
    from onmt_lma.bin.translate import get_parser
    from onmt_lma.runtime import OnnxTranslator

    opt = get_parser().parse_args(["-model", str(folder), "-src", str(src), "-max_length", "250"])
    translator = OnnxTranslator(folder, int8=int8)

    def translate(lines):
        found = translator.translate(lines, beam, batch_size, opt.max_length, opt.min_length, 1, opt.length_penalty,
                                     opt.alpha, opt.ban_unk_token, "sents", opt.max_length_ratio)
        return [hypotheses[0][1] for hypotheses in found]
    return translate


def translate_worker(checkpoint, src, output, beam, gpu, fixed_length=None, batch_size=1, chunk_lines=50,
                     engine="pytorch", int8=False):
    """Run in a fresh process: translate ``batch_size`` sentences at a time; speed and peak memory.

    The source goes to the engine a chunk of lines at a time, so that a
    progress bar with an ETA can show; the time counts translation only.
    """
    import torch
    from tqdm import tqdm

    lines = Path(src).read_text(encoding="utf-8").splitlines()
    if engine == "onnx":
        if gpu >= 0 or fixed_length:
            raise EvaluationInputError("-engine onnx runs on the CPU, without a fixed output length")
        import onnxruntime  # noqa: F401  (imported before the memory baseline, as torch is)
    else:
        from onmt.inference_engine import InferenceEnginePY

        opt = _translate_opts(checkpoint, src, output, beam, gpu, batch_size, fixed_length=fixed_length)
    before = _status_mb("VmRSS")
    _reset_peak_rss()
    if gpu >= 0:
        torch.cuda.reset_peak_memory_stats()
    if engine == "onnx":
        translate, finish = _onnx_translate(checkpoint, src, beam, batch_size, int8), (lambda: None)
    else:
        pytorch = InferenceEnginePY(opt)
        translate = lambda chunk: [n_best[0] for n_best in pytorch.infer_list(chunk)[1]]  # noqa: E731
        finish = pytorch.terminate
    seconds, hyps = 0.0, []
    with tqdm(total=len(lines), desc=f"translating {Path(src).name}", unit="sent", mininterval=5,
              file=sys.stderr) as progress:
        for first in range(0, len(lines), chunk_lines):
            chunk = lines[first:first + chunk_lines]
            start = time.perf_counter()
            hyps += translate(chunk)
            seconds += time.perf_counter() - start
            progress.update(len(chunk))
    finish()
    Path(output).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    if gpu >= 0:
        memory = {"device": "cuda", "measure": "torch.cuda.max_memory_allocated",
                  "peak_mb": torch.cuda.max_memory_allocated() / 2**20}
    else:
        peak = _status_mb("VmHWM")
        memory = {"device": "cpu", "measure": "peak resident memory (VmHWM) minus resident memory before model load",
                  "peak_mb": peak - before, "process_peak_rss_mb": peak}
    return {"seconds": seconds, "memory": memory}


def teacher_forced_batches(checkpoint, src, tgt, gpu=-1, batch_size=32, batch_type="sents"):
    """``(engine, batches, sentences)``: an OpenNMT-py inference engine for ``checkpoint`` and its batches of
    the ``src``/``tgt`` line pairs (the checkpoint's transforms and vocabularies; each batch has ``tgt``).
    Terminate the engine after use."""
    from onmt.constants import CorpusTask
    from onmt.inference_engine import InferenceEnginePY
    from onmt.inputters.dynamic_iterator import build_dynamic_dataset_iter

    src_lines = Path(src).read_text(encoding="utf-8").splitlines()
    tgt_lines = Path(tgt).read_text(encoding="utf-8").splitlines()
    if len(src_lines) != len(tgt_lines):
        raise EvaluationInputError(f"{src} has {len(src_lines)} lines, {tgt} {len(tgt_lines)}: "
                                   "expected line-aligned parallel text")
    opt = _translate_opts(checkpoint, src, os.devnull, 1, gpu, batch_size, batch_type=batch_type)
    engine = InferenceEnginePY(opt)
    batches = build_dynamic_dataset_iter(
        opt, engine.transforms_cls, engine.vocabs, task=CorpusTask.INFER,
        src=src_lines, tgt=tgt_lines, device_id=engine.device_id,
    )
    return engine, batches, len(src_lines)


def gold_perplexity(checkpoint, src, tgt, gpu, batch_size=32):
    """Perplexity of the references under the model (teacher forcing), per target token.

    Uses the translator's private ``_run_encoder``, ``_score_target`` and
    ``_tgt_pad_idx`` (OpenNMT-py 3.5.1; the list is in :mod:`onmt_lma.plugin`).
    """
    import torch
    from tqdm import tqdm

    engine, batches, sentences = teacher_forced_batches(checkpoint, src, tgt, gpu, batch_size)
    translator = engine.translator
    total_log_prob, tokens = 0.0, 0
    with torch.no_grad(), tqdm(total=sentences, desc="perplexity", unit="sent", mininterval=5) as progress:
        for batch, _ in batches:
            progress.update(batch["src"].size(0))
            src_t, enc_final_hs, enc_out, src_len = translator._run_encoder(batch)
            translator.model.decoder.init_state(src_t, enc_out, enc_final_hs)
            scores, _ = translator._score_target(batch, enc_out, src_len, None)
            total_log_prob += scores.sum().item()
            tokens += batch["tgt"][:, 1:, 0].ne(translator._tgt_pad_idx).sum().item()
    engine.terminate()
    return math.exp(-total_log_prob / tokens), tokens


def onnx_gold_perplexity(folder, src, tgt, int8, batch_size=32):
    """:func:`gold_perplexity` of an export folder's graphs on ONNX Runtime."""
    from onmt_lma.runtime import OnnxTranslator

    sources = Path(src).read_text(encoding="utf-8").splitlines()
    targets = Path(tgt).read_text(encoding="utf-8").splitlines()
    total_log_prob, tokens = OnnxTranslator(folder, int8=int8).score(sources, targets, batch_size)
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


def model_vocabularies(model):
    """``{"src": tokens, "tgt": tokens}`` of a checkpoint or an onmt_lma_export folder."""
    from onmt_lma.checkpoint import checkpoint_loading
    import torch

    if Path(model).is_dir():
        return {side: json.loads((Path(model) / f"{side}.vocab.json").read_text(encoding="utf-8"))
                for side in ("src", "tgt")}
    with checkpoint_loading(str(model)):
        return torch.load(model, map_location="cpu")["vocab"]


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
        "engine": "pytorch",
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


def export_facts(folder, int8):
    """:func:`model_facts` of an onmt_lma_export folder: its checkpoint's where the folder's manifest names one
    beside it (by name and sha256), else what the manifest records (``params`` then None)."""
    from onmt_lma.files import sha256_of

    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    checkpoint = Path(folder).parent / manifest["checkpoint"]
    if checkpoint.is_file() and sha256_of(checkpoint) == manifest["checkpoint_sha256"]:
        model, params = model_facts(checkpoint)
    else:
        model = {"activation": manifest["activation"], "hidden_size": manifest["hidden_size"],
                 "dec_layers": manifest["layers"], "kd_teacher": None, "quantized": None}
        params = None
    model.update(engine="onnx", exported_from=manifest["checkpoint"],
                 quantized="int8 (ONNX Runtime dynamic)" if int8 else model["quantized"])
    return model, params


def export_size_mb(folder, int8):
    """What an ONNX deployment of ``folder`` ships: the graphs used, the vocabularies and the manifest."""
    suffix = ".int8.onnx" if int8 else ".onnx"
    names = [f"encoder{suffix}", f"decoder_step{suffix}", "src.vocab.json", "tgt.vocab.json", "manifest.json"]
    return sum((Path(folder) / name).stat().st_size for name in names) / 2**20


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
    """The prepared corpus whose vocabularies ``checkpoint`` was trained with (None if not one of data_prep);
    for an export folder, that of the checkpoint beside it that it was exported from."""
    from onmt_lma.checkpoint import checkpoint_loading
    import torch

    if Path(checkpoint).is_dir():
        exported_from = Path(checkpoint).parent / json.loads((Path(checkpoint) / "manifest.json").read_text())[
            "checkpoint"]
        return checkpoint_corpus(exported_from) if exported_from.is_file() else None
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
    model = ({"export_sha256": sha256_of(Path(checkpoint) / "manifest.json")} if Path(checkpoint).is_dir()
             else {"checkpoint_sha256": sha256_of(checkpoint)})  # an export's manifest holds its files' sha256
    inputs = {**model, "corpus_key": manifest.get("key")}
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


def evaluate(checkpoint, corpus_dir, out, beam=5, gpu=-1, batch_size=1, test=None, engine="pytorch", int8=False):
    """Evaluate ``checkpoint`` on ``test`` (default: the test split of ``corpus_dir``); write ``out``.

    ``engine`` "onnx": ``checkpoint`` is an onmt_lma_export folder, evaluated on ONNX Runtime (its int8 graphs
    with ``int8``)."""
    checkpoint, out = Path(checkpoint), Path(out)
    test = test or prepared_test_set(corpus_dir)
    onnx = engine == "onnx"
    if onnx and gpu >= 0:
        raise EvaluationInputError(f"-gpu {gpu}: -engine onnx runs on the CPU")
    if not (checkpoint.is_dir() and (checkpoint / "manifest.json").is_file() if onnx else checkpoint.is_file()):
        raise EvaluationInputError(f"{'export folder' if onnx else 'checkpoint'} {checkpoint} does not exist"
                                   + (" or has no manifest.json (make it with onmt_lma_export)" if onnx else ""))
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
             str(hyp_path), "--beam", str(beam), "--gpu", str(gpu), "--batch-size", str(batch_size),
             "--engine", engine] + ["--int8"] * (onnx and int8),
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
    if onnx:
        ppl, ppl_tokens = onnx_gold_perplexity(checkpoint, test.src, test.tgt, int8)
        (model, params), size_mb = export_facts(checkpoint, int8), export_size_mb(checkpoint, int8)
    else:
        ppl, ppl_tokens = gold_perplexity(checkpoint, test.src, test.tgt, gpu)
        (model, params), size_mb = model_facts(checkpoint), checkpoint.stat().st_size / 2**20
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
        "size_mb": size_mb,
        **scores,
        "ppl": ppl,
        "ppl_tokens": ppl_tokens,
        "engine": engine,
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
    group.add("--engine", "-engine", choices=("pytorch", "onnx"), default="pytorch",
              help="pytorch: OpenNMT-py's translator; onnx: ONNX Runtime on onmt_lma_export folders (-model a folder, "
              "or a checkpoint, exported once beside it as CK.onnx/ with float32 and int8 graphs)")
    group.add("--int8", "-int8", action="store_true",
              help="evaluate each model's int8 version: -engine pytorch, onmt_lma_quantize -embeddings (written "
              "beside the checkpoint as CK.int8.pt and kept); -engine onnx, the export's int8 graphs")
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
        params = "–" if r["params"] is None else f"{r['params'] / 1e6:.2f} M"
        lines.append(f"| {model} | {r['model']['activation']} | {r['bleu']['score']:.2f} | {r['chrf']['score']:.2f} "
                     f"| {tok} | {r['ppl']:.2f} | {r['speed']['sentences_per_s']:.1f} | "
                     f"{r['memory']['peak_mb']:.0f} | {params} | {r['size_mb']:.1f} |")
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


def onnx_export_of(model, force=False):
    """An export folder as it is; for a checkpoint ``CK``, ``CK.onnx/`` beside it (onmt_lma_export with int8
    graphs), made again when missing, incomplete or exported from another version of ``CK``."""
    import shutil

    from onmt_lma import export
    from onmt_lma.files import sha256_of

    if Path(model).is_dir():
        return Path(model)
    out = Path(f"{model}.onnx")
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").is_file() else {}
    if not force and manifest.get("format") == export.FORMAT and manifest["checkpoint_sha256"] == sha256_of(model):
        return out
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        export.export(model, partial, int8=True)
    except export.ExportError as error:
        raise EvaluationInputError(f"-engine onnx: {error}") from None
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def run_command(opt):
    from onmt_lma.checkpoint import CheckpointError
    from onmt_lma.export import ExportError

    if (opt.src is None) != (opt.ref is None):
        raise EvaluationInputError("-src and -ref go together (a raw test set), or neither (-corpus's test split)")
    if opt.src is None and opt.corpus is None:
        raise EvaluationInputError("give -corpus DIR (its test split) or -src FILE -ref FILE (any raw test set)")
    if opt.ref_tok and opt.src is None:
        raise EvaluationInputError("-ref_tok goes with -src/-ref (a prepared corpus has its own)")
    onnx = opt.engine == "onnx"
    if onnx and opt.gpu >= 0:
        raise EvaluationInputError(f"-gpu {opt.gpu}: -engine onnx runs on the CPU")
    for model in opt.models:
        if onnx and Path(model).is_dir():
            if not (Path(model) / "manifest.json").is_file():
                raise EvaluationInputError(f"-model {model}: a folder without manifest.json; make an export folder "
                                           "with onmt_lma_export")
        elif Path(model).is_dir():
            raise EvaluationInputError(f"-model {model} is a folder: an onmt_lma_export folder needs -engine onnx")
        elif not Path(model).is_file():
            raise EvaluationInputError(f"-model {model}: no such checkpoint")
    if onnx:
        opt.models = [str(onnx_export_of(model, opt.force)) for model in opt.models]
    elif opt.int8:
        opt.models = [int8_version(model, opt.force) for model in opt.models]
    # an export's float32 and int8 evaluations: DIR.eval.json and DIR.int8.eval.json
    names = [f"{model}.int8" if onnx and opt.int8 else model for model in opt.models]
    paths = result_paths(names, None if opt.src is None else Path(opt.src).name, opt.out)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tests, corpora = {}, {}
        for model, name, out in zip(opt.models, names, paths):
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
        for model, name, out in zip(opt.models, names, paths):
            corpus = corpora[model]
            test = tests[Path(corpus).resolve()]
            if out.exists() and not opt.force and kept_result(out, model, test):
                logger.info("%s exists, made from these inputs: kept (replace it with -force)", out)
                result = json.loads(out.read_text())
            else:
                try:
                    result = evaluate(model, corpus, out, opt.beam_size, opt.gpu, opt.eval_batch_size, test=test,
                                      engine=opt.engine, int8=opt.int8)
                except (CheckpointError, ExportError) as error:
                    raise EvaluationInputError(str(error)) from None
                logger.info("%s: BLEU %.2f, chrF %.2f, ppl %.2f, %.1f sent/s, memory %.0f MB", out,
                            result["bleu"]["score"], result["chrf"]["score"], result["ppl"],
                            result["speed"]["sentences_per_s"], result["memory"]["peak_mb"])
            rows.append((name, result))
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
        worker.add_argument("--engine", choices=("pytorch", "onnx"), default="pytorch")
        worker.add_argument("--int8", action="store_true")
        args = worker.parse_args(argv[1:])
        print(json.dumps(translate_worker(args.checkpoint, args.src, args.out_hyp, args.beam, args.gpu,
                                          args.fixed_length, args.batch_size, engine=args.engine, int8=args.int8)))
        return
    from onmt.utils.logging import init_logger

    from onmt_lma.checkpoint import CheckpointError
    from onmt_lma.export import ExportError

    parser = get_parser()
    opt = parser.parse_args(argv)
    init_logger(opt.log_file)
    try:
        run_command(opt)
    except (EvaluationInputError, CorpusMismatchError, CheckpointError, ExportError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
