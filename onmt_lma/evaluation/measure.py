"""Translation speed and memory, measured in a fresh process, and test perplexity (teacher forcing).

``python -m onmt_lma.evaluation.measure --worker MODEL SRC OUT_HYP --translation JSON`` is the process
:func:`onmt_lma.evaluation.evaluate.evaluate` starts: it loads the model, translates and prints its time
and peak memory as one JSON line.
"""

import onmt_lma.base.onmt_import  # noqa: F401, I001  (first: before onmt)
from onmt_lma.training import plugin  # noqa: F401  (installs: LMA models load, translation is checked)

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch
from onmt.constants import CorpusTask
from onmt.inference_engine import InferenceEnginePY
from onmt.inputters.dynamic_iterator import build_dynamic_dataset_iter
from tqdm import tqdm

from onmt_lma.deploy.decoding import Decoding
from onmt_lma.deploy.engines import open_export
from onmt_lma.deploy.pytorch import translation_opts
from onmt_lma.evaluation.test_sets import EvaluationInputError


@dataclasses.dataclass(frozen=True)
class Translation:
    """How an evaluation translates: the engine (``pytorch``, or an export engine on an export folder), int8,
    the device, sentences a batch, and the :class:`~onmt_lma.deploy.decoding.Decoding`."""

    engine: str = "pytorch"
    int8: bool = False
    gpu: int = -1
    batch_size: int = 1
    decoding: Decoding = Decoding()

    def to_json(self):
        return json.dumps({**dataclasses.asdict(self), "decoding": self.decoding.as_dict()})

    @classmethod
    def from_json(cls, text):
        values = json.loads(text)
        return cls(**{**values, "decoding": Decoding.from_dict(values["decoding"], "--translation")})


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


def translate_worker(model, src, output, translation=Translation(), chunk_lines=50):
    """Run in a fresh process: translate ``src`` into ``output`` (the best hypothesis a line) as
    ``translation`` says; the time it took (translation only) and the peak memory.

    The source goes to the engine a chunk of lines at a time, so that a progress bar with an ETA can show.
    """
    lines = Path(src).read_text(encoding="utf-8").splitlines()
    t = translation
    if t.engine != "pytorch":
        if t.gpu >= 0:
            raise EvaluationInputError(f"-engine {t.engine} runs on the CPU")
        import onnxruntime  # noqa: F401  (imported before the memory baseline, as torch is)
    else:
        opt = translation_opts(model, t.decoding, t.gpu, t.batch_size)
    before = _status_mb("VmRSS")
    _reset_peak_rss()
    if t.gpu >= 0:
        torch.cuda.reset_peak_memory_stats()
    if t.engine != "pytorch":
        translator = open_export(t.engine, model, t.int8)
        translate = lambda chunk: [n_best[0][1] for n_best in translator.translate(  # noqa: E731
            chunk, t.decoding, t.batch_size)]
        finish = lambda: None  # noqa: E731
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
    if t.gpu >= 0:
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
    src_lines = Path(src).read_text(encoding="utf-8").splitlines()
    tgt_lines = Path(tgt).read_text(encoding="utf-8").splitlines()
    if len(src_lines) != len(tgt_lines):
        raise EvaluationInputError(f"{src} has {len(src_lines)} lines, {tgt} {len(tgt_lines)}: "
                                   "expected line-aligned parallel text")
    opt = translation_opts(checkpoint, Decoding(beam_size=1), gpu, batch_size, batch_type)
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
    engines.open_export`)."""
    sources = Path(src).read_text(encoding="utf-8").splitlines()
    targets = Path(tgt).read_text(encoding="utf-8").splitlines()
    total_log_prob, tokens = translator.score(sources, targets, batch_size)
    return math.exp(-total_log_prob / tokens), tokens


def main(argv=None):
    """``--worker MODEL SRC OUT_HYP --translation JSON``: :func:`translate_worker`, its result as one JSON line."""
    argv = sys.argv[1:] if argv is None else argv
    worker = argparse.ArgumentParser(prog="python -m onmt_lma.evaluation.measure --worker")
    worker.add_argument("--worker", action="store_true", required=True)
    for name in ("model", "src", "out_hyp"):
        worker.add_argument(name)
    worker.add_argument("--translation", type=Translation.from_json, default=Translation(),
                        help="Translation.to_json(): engine, int8, gpu, batch_size, decoding")
    args = worker.parse_args(argv)
    print(json.dumps(translate_worker(args.model, args.src, args.out_hyp, args.translation)))


if __name__ == "__main__":
    main()
