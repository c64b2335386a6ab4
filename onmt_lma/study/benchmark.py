"""Shared pieces of the benchmark scripts (``scripts/bench_*.py``): step timing, machine facts, translation
engines as ``translate(lines) -> best hypotheses`` functions (beam 5)."""

import onmt_lma.base.onmt_import  # noqa: F401, I001  (first: before onmt)
import os
import platform
import sys
import time
from pathlib import Path

import onmt.trainer
import torch

from onmt_lma.deploy.decoding import Decoding

#: training steps left out of a measurement (data loading, allocator warm-up)
WARMUP_STEPS = 3


class StepTimer:
    """Times every OpenNMT-py training step (forward, backward, optimizer) and counts its target tokens.

    ``with StepTimer() as timer: <train>``, then ``timer.tokens_per_second()``.
    """

    def __init__(self):
        self.steps = []
        self._original = None

    def __enter__(self):
        self._original = original = onmt.trainer.Trainer._gradient_accumulation
        steps = self.steps

        def timed(trainer, true_batches, normalization, total_stats, report_stats):
            words = total_stats.n_words
            start = time.perf_counter()
            result = original(trainer, true_batches, normalization, total_stats, report_stats)
            steps.append((total_stats.n_words - words, time.perf_counter() - start))
            return result

        onmt.trainer.Trainer._gradient_accumulation = timed
        return self

    def __exit__(self, *exc):
        onmt.trainer.Trainer._gradient_accumulation = self._original
        return False

    def tokens_per_second(self):
        measured = self.steps[WARMUP_STEPS:]
        if not measured:
            raise ValueError(f"only {len(self.steps)} steps timed; need more than {WARMUP_STEPS}")
        return sum(w for w, _ in measured) / sum(t for _, t in measured)


def model_names(checkpoints):
    """A short, distinct name per checkpoint for tables: its file name, or ``run folder/file name`` where two
    share a file name (``model_step_2750.pt`` of a ReLU and an LMA run)."""
    names = [Path(c).name for c in checkpoints]
    return [f"{Path(c).parent.name}/{n}" if names.count(n) > 1 else n for c, n in zip(checkpoints, names)]


def shown_path(path, base):
    """``path`` relative to ``base`` for a command line shown in results (no machine's absolute paths); its
    file name where it lies outside ``base``."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(base))
    return Path(path).name if relative.startswith("..") else relative


def machine():
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
    }


def pytorch_translate(checkpoint, batch=1, transform=None):
    """OpenNMT-py's translator of ``checkpoint``, ``batch`` sentences at a time (its model changed by
    ``transform`` first, e.g. a quantization)."""
    from onmt.inference_engine import InferenceEnginePY

    from onmt_lma.deploy.pytorch import translation_opts

    engine = InferenceEnginePY(translation_opts(checkpoint, batch_size=batch))
    if transform is not None:
        transform(engine.translator.model)
    return lambda lines: [n_best[0] for n_best in engine.infer_list(lines)[1]]


def onnx_translate(folder, batch=1, int8=False, threads=None):
    """onmt-lma's ONNX Runtime engine on an ``onmt_lma_export`` folder (``threads``: intra-op threads, None
    for ONNX Runtime's default, one per core); ``.profile``: where its time went."""
    from onmt_lma.deploy.runtime import OnnxTranslator

    translator = OnnxTranslator(folder, int8=int8, threads=threads)

    def translate(lines):
        return [hypotheses[0][1] for hypotheses in translator.translate(lines, Decoding(), batch)]
    translate.profile = translator.profile  # summed over every call
    return translate


def native_translate(folder, batch=1, int8=False, threads=None):
    """onmt-lma's native engine on an ``onmt_lma_export`` folder (``threads``: intra-op threads, None for
    PyTorch's default, one per core); ``.profile``: where its time went."""
    from onmt_lma.deploy.engines import open_export

    translator = open_export("native", folder, int8, threads or 0)  # float32: the torch-free runtime

    def translate(lines):
        return [hypotheses[0][1] for hypotheses in translator.translate(lines, Decoding(), batch)]
    translate.profile = translator.profile  # summed over every call
    return translate


def ctranslate2_translate(folder, batch=1, threads=None):
    """CTranslate2 on a converted folder (``onmt_lma_convert_ct2``), ``threads`` intra-op threads (default:
    torch's); beam 5, at most 250 tokens."""
    import ctranslate2

    translator = ctranslate2.Translator(str(folder), device="cpu", inter_threads=1,
                                        intra_threads=threads or torch.get_num_threads())

    def translate(lines):
        results = translator.translate_batch([line.split() for line in lines], beam_size=5, max_batch_size=batch,
                                             max_decoding_length=250)
        return [" ".join(result.hypotheses[0]) for result in results]
    return translate


def in_fresh_process(script, args, what):
    """Run ``script --worker ...`` (``args``) in a fresh Python process and return the JSON its last stdout line
    holds: one configuration per process, so that the worker threads an engine leaves spinning (OpenMP's, ONNX
    Runtime's) take no cycles from the next one and memory peaks do not mix.  ``what`` names it in an error."""
    import json
    import subprocess

    done = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{what} could not be measured:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
