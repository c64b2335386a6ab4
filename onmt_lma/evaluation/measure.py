"""Translation speed and memory, measured in a fresh process, and test perplexity (teacher forcing).

``python -m onmt_lma.evaluation.measure --worker CK SRC OUT_HYP ...`` is the process
:func:`onmt_lma.evaluation.evaluate.evaluate` starts: it loads the model, translates and prints its time
and peak memory as one JSON line.
"""

import onmt_lma.base.onmt_import  # noqa: F401, I001  (first: before onmt)
from onmt_lma.training import plugin  # noqa: F401  (installs: LMA models load, translation is checked)

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from onmt_lma.evaluation.test_sets import EvaluationInputError


def translation_parser():
    """``onmt_translate``'s options and the plugin's checks of the model options, as ``onmt_lma_translate`` has them."""
    import onmt.opts
    from onmt.utils.parse import ArgumentParser

    from onmt_lma.model.options import add_lma_opts

    parser = ArgumentParser()
    onmt.opts.translate_opts(parser)
    add_lma_opts(parser, for_translation=True)
    return parser


def translation_opts(checkpoint, src, output, beam, gpu, batch_size=1, fixed_length=None, batch_type="sents"):
    from onmt.utils.parse import ArgumentParser

    args = ["-model", str(checkpoint), "-src", str(src), "-output", str(output),
            "-beam_size", str(beam), "-batch_size", str(batch_size), "-batch_type", batch_type,
            "-max_length", "250", "-gpu", str(gpu)]
    if fixed_length:  # every hypothesis exactly this long: equal decoding work across models
        args += ["-min_length", str(fixed_length), "-max_length", str(fixed_length)]
    opt = translation_parser().parse_args(args)
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


def _export_translate(engine, folder, src, beam, batch_size, int8):
    """``engine`` (onnx, native) on the export ``folder`` and a function translating a list of lines (best
    hypothesis each) with onmt_lma_translate's defaults, as the PyTorch engine is run here (``-max_length 250``)."""
    from onmt_lma.deploy.native import open_export

    opt = translation_parser().parse_args(["-model", str(folder), "-src", str(src), "-max_length", "250"])
    translator = open_export(engine, folder, "int8" if int8 else "")

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
    if engine != "pytorch":
        if gpu >= 0 or fixed_length:
            raise EvaluationInputError(f"-engine {engine} runs on the CPU, without a fixed output length")
        import onnxruntime  # noqa: F401  (imported before the memory baseline, as torch is)
    else:
        from onmt.inference_engine import InferenceEnginePY

        opt = translation_opts(checkpoint, src, output, beam, gpu, batch_size, fixed_length=fixed_length)
    before = _status_mb("VmRSS")
    _reset_peak_rss()
    if gpu >= 0:
        torch.cuda.reset_peak_memory_stats()
    if engine != "pytorch":
        translate, finish = _export_translate(engine, checkpoint, src, beam, batch_size, int8), (lambda: None)
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
    opt = translation_opts(checkpoint, src, os.devnull, 1, gpu, batch_size, batch_type=batch_type)
    engine = InferenceEnginePY(opt)
    batches = build_dynamic_dataset_iter(
        opt, engine.transforms_cls, engine.vocabs, task=CorpusTask.INFER,
        src=src_lines, tgt=tgt_lines, device_id=engine.device_id,
    )
    return engine, batches, len(src_lines)


def gold_perplexity(checkpoint, src, tgt, gpu, batch_size=32):
    """Perplexity of the references under the model (teacher forcing), per target token.

    Uses the translator's private ``_run_encoder``, ``_score_target`` and
    ``_tgt_pad_idx`` (OpenNMT-py 3.5.1; the list is in :mod:`onmt_lma.training.plugin`).
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


def export_gold_perplexity(translator, src, tgt, batch_size=32):
    """:func:`gold_perplexity` of an export folder on its engine's ``translator`` (:func:`~onmt_lma.deploy.
    native.open_export`)."""
    sources = Path(src).read_text(encoding="utf-8").splitlines()
    targets = Path(tgt).read_text(encoding="utf-8").splitlines()
    total_log_prob, tokens = translator.score(sources, targets, batch_size)
    return math.exp(-total_log_prob / tokens), tokens


def main(argv=None):
    """``--worker CKPT SRC OUT_HYP [--beam N] ...``: :func:`translate_worker`, its result as one JSON line."""
    from onmt_lma.deploy.native import ENGINES as EXPORT_ENGINES

    argv = sys.argv[1:] if argv is None else argv
    worker = argparse.ArgumentParser(prog="python -m onmt_lma.evaluation.measure --worker")
    worker.add_argument("--worker", action="store_true", required=True)
    for name in ("checkpoint", "src", "out_hyp"):
        worker.add_argument(name)
    worker.add_argument("--beam", type=int, default=5)
    worker.add_argument("--gpu", type=int, default=-1)
    worker.add_argument("--batch-size", type=int, default=1)
    worker.add_argument("--fixed-length", type=int)
    worker.add_argument("--engine", choices=("pytorch",) + EXPORT_ENGINES, default="pytorch")
    worker.add_argument("--int8", action="store_true")
    args = worker.parse_args(argv)
    print(json.dumps(translate_worker(args.checkpoint, args.src, args.out_hyp, args.beam, args.gpu,
                                      args.fixed_length, args.batch_size, engine=args.engine, int8=args.int8)))


if __name__ == "__main__":
    main()
