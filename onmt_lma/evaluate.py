"""Evaluate a checkpoint on a prepared corpus's test set; one JSON file per run.

    python -m onmt_lma.evaluate CHECKPOINT CORPUS_DIR [--out FILE] [--beam 5] [--gpu 0]

Fields (Xu et al. 2020, translation experiments):
  * ``bleu``: sacreBLEU on detokenized text against ``test.ref.detok.en``, with
    its signature; ``bleu_tok``: BLEU on Moses-tokenized text against
    ``test.ref.tok.en`` with sacreBLEU's ``tokenize=none``, which computes what
    Moses ``multi-bleu.perl`` does (the paper's number);
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


def translate_worker(checkpoint, src, output, beam, gpu, fixed_length=None, batch_size=1):
    """Run in a fresh process: translate ``batch_size`` sentences at a time; speed and peak memory."""
    from onmt_lma import plugin  # noqa: F401
    from onmt.inference_engine import InferenceEnginePY
    import torch

    opt = _translate_opts(checkpoint, src, output, beam, gpu, batch_size, fixed_length=fixed_length)
    before = _status_mb("VmRSS")
    _reset_peak_rss()
    if gpu >= 0:
        torch.cuda.reset_peak_memory_stats()
    engine = InferenceEnginePY(opt)
    start = time.perf_counter()
    engine.infer_file()
    seconds = time.perf_counter() - start
    engine.terminate()
    if gpu >= 0:
        memory = {"device": "cuda", "measure": "torch.cuda.max_memory_allocated",
                  "peak_mb": torch.cuda.max_memory_allocated() / 2**20}
    else:
        peak = _status_mb("VmHWM")
        memory = {"device": "cpu", "measure": "peak resident memory (VmHWM) minus resident memory before model load",
                  "peak_mb": peak - before, "process_peak_rss_mb": peak}
    return {"seconds": seconds, "memory": memory}


def gold_perplexity(checkpoint, src, tgt, gpu, batch_size=32):
    """Perplexity of the references under the model (teacher forcing), per target token."""
    from onmt_lma import plugin  # noqa: F401
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
    with torch.no_grad():
        for batch, _ in batches:
            src_t, enc_final_hs, enc_out, src_len = translator._run_encoder(batch)
            translator.model.decoder.init_state(src_t, enc_out, enc_final_hs)
            scores, _ = translator._score_target(batch, enc_out, src_len, None)
            total_log_prob += scores.sum().item()
            tokens += batch["tgt"][:, 1:, 0].ne(translator._tgt_pad_idx).sum().item()
    engine.terminate()
    return math.exp(-total_log_prob / tokens), tokens


def bleu_scores(hyp_tok, hyp_detok, ref_tok, ref_detok):
    """Detokenized sacreBLEU (signature) and tokenized BLEU (multi-bleu.perl)."""
    detok = sacrebleu.BLEU()
    detok_score = detok.corpus_score(hyp_detok, [ref_detok])
    tok = sacrebleu.BLEU(tokenize="none", force=True)
    tok_score = tok.corpus_score(hyp_tok, [ref_tok])
    return (
        {"score": detok_score.score, "signature": str(detok.get_signature()), "text": str(detok_score)},
        {"score": tok_score.score, "signature": str(tok.get_signature()), "text": str(tok_score)},
    )


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


def check_vocabulary(checkpoint, corpus_dir):
    """Refuse, before translating, a checkpoint whose source or target vocabulary misses most test tokens.

    A word-level model on a SentencePiece corpus (or the reverse, or another
    corpus) translates almost everything as unknown and would otherwise write a
    complete-looking result with BLEU near 0.
    """
    from onmt_lma.checkpoint import checkpoint_loading
    import torch

    with checkpoint_loading(str(checkpoint)):
        vocab = torch.load(checkpoint, map_location="cpu")["vocab"]
    for side, name in (("src", "test.de"), ("tgt", "test.en")):
        known = set(vocab[side])
        tokens = (Path(corpus_dir) / name).read_text(encoding="utf-8").split()
        unknown = sum(token not in known for token in tokens)
        if tokens and unknown / len(tokens) > MAX_UNKNOWN_SHARE:
            raise CorpusMismatchError(
                f"checkpoint {checkpoint} does not fit corpus {corpus_dir}: {unknown} of {len(tokens)} tokens of "
                f"{name} are not in its {'source' if side == 'src' else 'target'} vocabulary; was it trained on "
                "this corpus, with the same subword scheme?")


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


def evaluation_inputs(checkpoint, corpus_dir):
    """What a result depends on: the checkpoint's sha256 and the prepared corpus's key (its manifest)."""
    from onmt_lma.files import sha256_of

    manifest = json.loads((Path(corpus_dir) / "manifest.json").read_text())
    return {"checkpoint_sha256": sha256_of(checkpoint), "corpus_key": manifest.get("key")}


def kept_result(out, checkpoint, corpus_dir):
    """True when ``out`` holds a result of these very inputs (or one too old to say): keep it."""
    recorded = json.loads(Path(out).read_text()).get("inputs")
    if recorded is None:
        return True
    now = evaluation_inputs(checkpoint, corpus_dir)
    changed = [key for key in now if recorded.get(key) != now[key]]
    if changed:
        print(f"[evaluate] {out} was made from other inputs ({', '.join(changed)} changed): evaluating again")
        return False
    return True


def evaluate(checkpoint, corpus_dir, out, beam=5, gpu=-1, batch_size=1):
    checkpoint, corpus_dir, out = Path(checkpoint), Path(corpus_dir), Path(out)
    for name in ("test.de", "test.en", "test.ref.tok.en", "test.ref.detok.en", "manifest.json"):
        if not (corpus_dir / name).is_file():
            raise FileNotFoundError(f"{corpus_dir / name} is missing: prepare the corpus with python -m data_prep")
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    check_vocabulary(checkpoint, corpus_dir)
    started = time.time()

    with tempfile.TemporaryDirectory() as tmp:
        hyp_path = Path(tmp) / "hyp"
        worker = subprocess.run(
            [sys.executable, "-m", "onmt_lma.evaluate", "--worker", str(checkpoint), str(corpus_dir / "test.de"),
             str(hyp_path), "--beam", str(beam), "--gpu", str(gpu), "--batch-size", str(batch_size)],
            capture_output=True, text=True,
        )
        if worker.returncode != 0:
            raise RuntimeError(f"translation of {corpus_dir / 'test.de'} failed:\n{worker.stderr[-3000:]}")
        run = json.loads(worker.stdout.strip().splitlines()[-1])
        hyps = hyp_path.read_text(encoding="utf-8").splitlines()

    sources = (corpus_dir / "test.de").read_text(encoding="utf-8").splitlines()
    if len(hyps) != len(sources):
        raise RuntimeError(f"{len(hyps)} translations for {len(sources)} test sentences")
    hyp_tok, hyp_detok = postprocess(hyps, corpus_dir)
    ref_tok = (corpus_dir / "test.ref.tok.en").read_text(encoding="utf-8").splitlines()
    ref_detok = (corpus_dir / "test.ref.detok.en").read_text(encoding="utf-8").splitlines()
    bleu, bleu_tok = bleu_scores(hyp_tok, hyp_detok, ref_tok, ref_detok)
    ppl, ppl_tokens = gold_perplexity(checkpoint, corpus_dir / "test.de", corpus_dir / "test.en", gpu)
    model, params = model_facts(checkpoint)
    target_tokens = sum(len(h.split()) for h in hyps)

    result = {
        "checkpoint": str(checkpoint.resolve()),
        "run_dir": str(checkpoint.resolve().parent),
        "corpus": manifest["corpus"],
        "subword": manifest["options"]["subword"],
        "test_sentences": len(sources),
        "model": model,
        "params": params,
        "size_mb": checkpoint.stat().st_size / 2**20,
        "bleu": bleu,
        "bleu_tok": bleu_tok,
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
        "inputs": evaluation_inputs(checkpoint, corpus_dir),
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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m onmt_lma.evaluate", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("corpus_dir", nargs="?")
    parser.add_argument("out_hyp", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--out", help="JSON file (default: <checkpoint>.eval.json)")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--gpu", type=int, default=-1, help="CUDA device, -1 for CPU")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="sentences translated at a time (default 1: the paper's speed measure)")
    parser.add_argument("--force", action="store_true", help="replace an existing result")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fixed-length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:  # internal: python -m onmt_lma.evaluate --worker CKPT SRC OUT_HYP
        print(json.dumps(translate_worker(args.checkpoint, args.corpus_dir, args.out_hyp, args.beam, args.gpu,
                                          args.fixed_length, args.batch_size)))
        return
    if args.corpus_dir is None:
        parser.error("CORPUS_DIR is required")
    out = Path(args.out or f"{args.checkpoint}.eval.json")
    try:
        if out.exists() and not args.force and kept_result(out, args.checkpoint, args.corpus_dir):
            print(f"[evaluate] {out} exists, made from these inputs: kept (replace it with --force, or FORCE=1 "
                  "scripts/evaluate.sh)")
            return
        if args.batch_size < 1:
            raise RuntimeError(f"--batch-size must be >= 1, got {args.batch_size}")
        result = evaluate(args.checkpoint, args.corpus_dir, out, args.beam, args.gpu, args.batch_size)
    except (FileNotFoundError, RuntimeError) as error:  # CorpusMismatchError too
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print(f"[evaluate] {out}: BLEU {result['bleu']['score']:.2f} ({result['bleu']['signature']}), "
          f"tokenized BLEU {result['bleu_tok']['score']:.2f}, ppl {result['ppl']:.2f}, "
          f"{result['speed']['sentences_per_s']:.1f} sent/s, memory {result['memory']['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
