"""Recompute LMA's running statistics of a trained model over parallel text (``onmt_lma_recalibrate``;
:mod:`onmt_lma.bin.recalibrate` says why and what it changed on the released students).
"""

from pathlib import Path

import torch

from onmt_lma.base.checkpoint import load, save
from onmt_lma.base.errors import UserError
from onmt_lma.evaluation.measure import teacher_forced_batches
from onmt_lma.evaluation.test_sets import EvaluationInputError
from onmt_lma.model.statistics import batch_statistics_mode, lma_layers, running_statistics, training_dropout


class RecalibrationError(UserError, ValueError):
    """A model or text that cannot be recalibrated."""


def recalibrated_statistics(checkpoint, src, tgt, gpu=-1, batch_size=3192, batch_type="tokens",
                            max_sentences=None, dropout=False, seed=1):
    """``({layer: (mean, std)}, sentences, batches)``: the mean batch statistics of every LMA layer of
    ``checkpoint`` over the pairs of ``src``/``tgt`` (``max_sentences``: the batches until that many pairs are
    seen; ``dropout``: with the checkpoint's dropout on, drawn from ``seed``)."""
    from tqdm import tqdm

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


def recalibrate(checkpoint, src, tgt, output, gpu=-1, batch_size=3192, batch_type="tokens", max_sentences=None,
                dropout=False):
    """Write ``checkpoint`` with recalibrated LMA statistics to ``output``; return the new statistics."""

    if not Path(checkpoint).is_file():
        raise RecalibrationError(f"-model {checkpoint} does not exist")
    for option, path in (("-src", src), ("-tgt", tgt)):
        if not Path(path).is_file():
            raise RecalibrationError(f"{option} {path} does not exist")
    statistics, sentences, n_batches = recalibrated_statistics(checkpoint, src, tgt, gpu, batch_size, batch_type,
                                                               max_sentences, dropout)
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
        "batch_size": batch_size, "batch_type": batch_type, "dropout": bool(dropout)})
    save(saved, output)
    return statistics
