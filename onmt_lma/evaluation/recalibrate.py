"""Recompute LMA's running statistics of a trained model over parallel text (``onmt_lma_recalibrate``;
:mod:`onmt_lma.bin.recalibrate` says why and what it changed on the released students).
"""

import dataclasses
from pathlib import Path

import torch
from tqdm import tqdm

from onmt_lma.base.checkpoint import load, save
from onmt_lma.base.errors import UserError
from onmt_lma.evaluation.measure import teacher_forced_batches
from onmt_lma.evaluation.test_sets import EvaluationInputError
from onmt_lma.model.statistics import batch_statistics_mode, lma_layers, running_statistics, training_dropout


class RecalibrationError(UserError, ValueError):
    """A model or text that cannot be recalibrated."""


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the statistics are gathered: device, batches (OpenNMT-py's ``-batch_size``/``-batch_type``), at most
    ``max_sentences`` pairs (None: all), with the checkpoint's dropout on (``dropout``, drawn from ``seed``)."""

    gpu: int = -1
    batch_size: int = 3192
    batch_type: str = "tokens"
    max_sentences: int = None
    dropout: bool = False
    seed: int = 1


def recalibrated_statistics(checkpoint, src, tgt, sampling=Sampling()):
    """``({layer: (mean, std)}, sentences, batches)``: the mean batch statistics of every LMA layer of
    ``checkpoint`` over the pairs of ``src``/``tgt``, gathered as ``sampling`` says."""
    gpu, batch_size, batch_type, max_sentences, dropout, seed = dataclasses.astuple(sampling)
    try:
        engine, batches, total = teacher_forced_batches(checkpoint, src, tgt, gpu, batch_size, batch_type)
    except EvaluationInputError as error:
        raise RecalibrationError(f"-src/-tgt: {error}") from None
    model = engine.translator.model
    try:
        if not lma_layers(model):
            raise RecalibrationError(f"-model {checkpoint}: it has no LMA layer; nothing to recalibrate")
        if dropout:

            training_dropout(model, load(checkpoint)["opt"])
        sentences = n_batches = 0
        total = min(total, max_sentences) if max_sentences else total
        torch.manual_seed(seed)
        with torch.no_grad(), batch_statistics_mode(model, dropout) as next_batch, \
                tqdm(total=total, desc="LMA statistics", unit="sent", mininterval=5) as progress:
            for batch, _ in batches:
                if max_sentences and sentences >= max_sentences:
                    break
                next_batch()
                model(batch["src"], batch["tgt"], batch["srclen"], with_align=False)
                sentences += batch["src"].size(0)
                n_batches += 1
                progress.update(batch["src"].size(0))
        if n_batches == 0:
            raise RecalibrationError(f"-src {src}: no sentence pair to compute statistics from")
        return running_statistics(model), sentences, n_batches
    finally:
        engine.terminate()


def recalibrate(checkpoint, src, tgt, output, sampling=Sampling()):
    """Write ``checkpoint`` with recalibrated LMA statistics to ``output``; return the new statistics."""

    if not Path(checkpoint).is_file():
        raise RecalibrationError(f"-model {checkpoint} does not exist")
    for option, path in (("-src", src), ("-tgt", tgt)):
        if not Path(path).is_file():
            raise RecalibrationError(f"{option} {path} does not exist")
    statistics, sentences, n_batches = recalibrated_statistics(checkpoint, src, tgt, sampling)
    saved = load(checkpoint)
    for name, (mean, std) in statistics.items():
        for buffer, value in (("running_mean", mean), ("running_std", std)):
            key = f"{name}.{buffer}"
            if key not in saved["model"]:
                raise RecalibrationError(f"-model {checkpoint}: no tensor {key} in the checkpoint")
            old = saved["model"][key]
            saved["model"][key] = torch.full_like(old, value)
    saved["onmt_lma"] = dict(saved.get("onmt_lma") or {}, recalibrated={
        "src": Path(src).name, "tgt": Path(tgt).name, "sentences": sentences, "batches": n_batches,
        "batch_size": sampling.batch_size, "batch_type": sampling.batch_type, "dropout": bool(sampling.dropout)})
    save(saved, output)
    return statistics
