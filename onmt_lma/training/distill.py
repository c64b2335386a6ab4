"""Word-level knowledge distillation from a teacher checkpoint (Xu et al. 2020, distillation).

``loss = (1 - A) * NLL(student, gold) + A * T^2 * KL(softmax(teacher / T) || softmax(student / T))``

summed over the non-padding target tokens.  Dividing both logits by the
temperature ``T`` shrinks the KL gradient by ``1 / T^2`` (Hinton et al. 2015);
the ``T^2`` factor restores it, so ``A`` keeps its meaning at any temperature.
OpenNMT-py's LM-prior loss (``onmt/utils/loss.py``) uses the same scaling.

The math is :func:`distillation_loss`; :class:`onmt_lma.training.teacher.Teacher` runs the frozen teacher
(or :class:`onmt_lma.training.kd_cache.CachedTeacher` looks its top-K up, ``-kd_cache``),
:class:`DistillationLossCompute` plugs both into OpenNMT-py's training loop and
:func:`attach_teacher` checks and loads the teacher before training starts.
"""

import onmt_lma.base.onmt_import  # noqa: F401, I001  (first: before onmt)

import argparse
import os

import torch
import torch.nn.functional as F

from onmt.modules.sparse_losses import SparsemaxLoss
from onmt.utils.logging import logger
from onmt.utils.loss import LossCompute
from onmt.utils.statistics import Statistics

from onmt_lma.base.errors import UserError
from onmt_lma.base.opts import float_type
from onmt_lma.training.kd_cache import CachedTeacher, TeacherCache, reading_stride
from onmt_lma.training.teacher import DistillationError, Teacher


DEFAULT_ALPHA = 0.7


DEFAULT_TEMPERATURE = 1.0


class NonFiniteTrainingError(UserError, RuntimeError):
    """Training produced a non-finite loss or weights: stopped, nothing saved."""


def check_finite_loss(loss, step, parts):
    """Raise :class:`NonFiniteTrainingError` naming the step and the loss parts when ``loss`` is inf or NaN."""
    if not torch.isfinite(loss).all():
        described = ", ".join(f"{name} {value:.6g}" for name, value in parts.items())
        raise NonFiniteTrainingError(
            f"the training loss is not finite at step {step} ({described}); training stopped before "
            "saving it: lower -learning_rate or -kd_temperature, or set -max_grad_norm")


def distillation_loss(
    student_logits, teacher_scores, target, padding_idx, alpha, temperature, label_smoothing=0.0,
    teacher_ids=None,
):
    """Word-level KD loss, summed over the non-padding tokens.

    Args:
        student_logits: ``(tokens, vocab)`` unnormalized scores.
        teacher_scores: the teacher's logits or log-probabilities, ``(tokens, vocab)``,
            or ``(tokens, K)`` over the support ``teacher_ids`` (a top-K cache,
            :mod:`onmt_lma.training.kd_cache`): the teacher distribution is then
            renormalized over the K ids, the student's is not (its full
            log-probabilities at those ids), so with K = vocab both agree.
        target: ``(tokens,)`` gold ids; ``padding_idx`` marks tokens to ignore.
        alpha: KD weight ``A`` in [0, 1]; temperature: ``T`` > 0.
        label_smoothing: applied to the NLL part only, as OpenNMT-py does.

    Returns:
        ``(loss, nll, kl)``: the objective, the NLL part and the unweighted KL part,
        each a sum over the non-padding tokens.
    """
    student_logits = student_logits.float()
    if temperature == 1.0 and label_smoothing == 0:
        # one log-softmax over the vocabulary serves both terms (the costly part); cross_entropy is
        # exactly nll_loss(log_softmax(.)), so -kd_alpha 0 still trains exactly like no teacher
        student_log_probs = F.log_softmax(student_logits, dim=-1)
        nll = F.nll_loss(student_log_probs, target, ignore_index=padding_idx, reduction="sum")
    else:
        nll = F.cross_entropy(
            student_logits,
            target,
            ignore_index=padding_idx,
            reduction="sum",
            label_smoothing=label_smoothing,
        )
        student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    if teacher_ids is not None:
        student_log_probs = student_log_probs.gather(-1, teacher_ids)
    teacher_log_probs = F.log_softmax(teacher_scores.float() / temperature, dim=-1)
    kl_per_token = F.kl_div(
        student_log_probs, teacher_log_probs, reduction="none", log_target=True
    ).sum(-1)
    kl = kl_per_token.masked_select(target.ne(padding_idx)).sum()
    loss = (1.0 - alpha) * nll + alpha * temperature**2 * kl
    return loss, nll, kl


alpha_type = float_type("a number in [0, 1]", lambda a: 0.0 <= a <= 1.0)


#: at most MAX_TEMPERATURE, so that T^2 times a float32 KL stays finite and meaningful
MAX_TEMPERATURE = 1000.0


temperature_type = float_type(f"a number in (0, {MAX_TEMPERATURE:g}]", lambda t: 0.0 < t <= MAX_TEMPERATURE)


def teacher_path_type(value):
    if os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"teacher checkpoint {value!r} is a folder; give its model_step_N.pt file")
    if not os.path.isfile(value):
        raise argparse.ArgumentTypeError(f"teacher checkpoint {value!r} does not exist")
    return value


def add_kd_opts(parser):
    """Options of word-level distillation (training only)."""
    group = parser.add_argument_group("Knowledge distillation (onmt-lma)")
    group.add(
        "--kd_teacher",
        "-kd_teacher",
        type=teacher_path_type,
        default=None,
        help="Teacher checkpoint (OpenNMT-py or onmt-lma, any activation) with the "
        "student's source and target vocabularies. Without it, training is plain.",
    )
    group.add(
        "--kd_cache",
        "-kd_cache",
        default=None,
        help="Instead of -kd_teacher: a folder of the teacher's top-K distributions made once by "
        "onmt_lma_teacher_cache for this -config's corpora and vocabularies (no teacher pass per step).",
    )
    group.add(
        "--kd_alpha",
        "-kd_alpha",
        type=alpha_type,
        default=DEFAULT_ALPHA,
        help="Weight A of the KD term: (1 - A) * NLL + A * T^2 * KL. In [0, 1]. Paper: 0.7.",
    )
    group.add(
        "--kd_temperature",
        "-kd_temperature",
        type=temperature_type,
        default=DEFAULT_TEMPERATURE,
        help="Temperature T > 0 softening both distributions in the KL term "
        "(the T^2 factor keeps gradients comparable). Paper: 1 for translation.",
    )
    return group


class DistillationStatistics(Statistics):
    """OpenNMT-py statistics that also sum the KL part and report it per token."""

    def __init__(self, *args, kd_loss=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.kd_loss = kd_loss

    def update(self, stat, update_n_src_words=False):
        super().update(stat, update_n_src_words)
        other = getattr(stat, "kd_loss", None)
        if other is not None:
            self.kd_loss = (self.kd_loss or 0.0) + other

    def kd_kl(self):
        """Mean KL(teacher || student) per target token."""
        return self.kd_loss / max(self.n_words, 1)

    def output(self, step, num_steps, learning_rate, start):
        if self.kd_loss is None:
            return super().output(step, num_steps, learning_rate, start)
        metrics = self.computed_metrics
        self.computed_metrics = {**metrics, "kd_kl": self.kd_kl()}
        try:
            return super().output(step, num_steps, learning_rate, start)
        finally:
            self.computed_metrics = metrics

    def log_tensorboard(self, prefix, writer, learning_rate, patience, step):
        super().log_tensorboard(prefix, writer, learning_rate, patience, step)
        if self.kd_loss is not None:
            writer.add_scalar(prefix + "/kd_kl", self.kd_kl(), step)


class DistillationLossCompute(LossCompute):
    """OpenNMT-py's ``LossCompute`` plus an optional teacher (training loss only).

    With a teacher, ``xent``/``ppl`` in the training log are the student's NLL
    part and ``kd_kl`` the KL part per token; validation keeps the plain NLL.
    """

    teacher = None
    kd_alpha = DEFAULT_ALPHA
    kd_temperature = DEFAULT_TEMPERATURE
    optim = None  # the trainer's optimizer, for the step in error messages (set by the plugin)

    def _step(self):
        return self.optim.training_step if self.optim is not None else "?"

    def attach(self, teacher, alpha, temperature):
        if self.copy_attn or isinstance(self.criterion, SparsemaxLoss):
            raise DistillationError("-kd_teacher works with a softmax generator: drop -copy_attn / sparsemax")
        if (
            self.lambda_align
            or self.lambda_coverage
            or self.lm_prior_model is not None
            or self.lm_generator is not None
        ):
            raise DistillationError(
                "-kd_teacher cannot be combined with -lambda_align, -lambda_coverage or -lm_prior_model"
            )
        self.teacher, self.kd_alpha, self.kd_temperature = teacher, alpha, temperature

    def forward(self, batch, output, attns, trunc_start=0, trunc_size=None):
        if self.teacher is None:
            loss, stats = super().forward(batch, output, attns, trunc_start, trunc_size)
            if self.optim is not None:  # the training loss (validation's has no optimizer)
                check_finite_loss(loss, self._step(), {"loss": loss.sum().item()})
            return loss, stats
        if trunc_size is None:
            trunc_size = batch["tgt"].size(1) - trunc_start
        end = trunc_start + trunc_size
        target = batch["tgt"][:, trunc_start + self.tgt_shift_index : end, 0].reshape(-1)
        student_logits = self.generator(self._bottle(output[:, trunc_start:end, :].contiguous()))
        teacher_scores, teacher_ids = self.teacher.scores(batch, trunc_start, end)
        loss, nll, kl = distillation_loss(
            student_logits,
            teacher_scores,
            target,
            self.padding_idx,
            self.kd_alpha,
            self.kd_temperature,
            self.criterion.label_smoothing,
            teacher_ids,
        )
        check_finite_loss(loss, self._step(), {"NLL": nll.item(), "KL": kl.item(),
                                               "T^2": self.kd_temperature ** 2})
        n_sents = len(batch["srclen"]) if trunc_start == 0 else 0
        stats = self._stats(n_sents, nll.item(), student_logits, target)
        stats.kd_loss = kl.item()
        return loss, stats


def attach_teacher(trainer, opt, vocabs):
    """Give ``trainer``'s training loss the teacher of ``opt.kd_teacher`` or the cache of ``opt.kd_cache``."""
    teacher_path, cache_path = getattr(opt, "kd_teacher", None), getattr(opt, "kd_cache", None)
    if teacher_path and cache_path:
        raise DistillationError("-kd_teacher and -kd_cache both given: the cache replaces the teacher, give one")
    if not (teacher_path or cache_path):
        return trainer
    device = next(trainer.model.parameters()).device
    if teacher_path:
        teacher = Teacher.load(teacher_path, vocabs, device)
    else:
        cache = TeacherCache(cache_path)
        cache.check(vocabs, opt)
        teacher = CachedTeacher(cache, trainer.train_loss.padding_idx, reading_stride(opt), device)
        logger.info("Distilling from the teacher cache %s (top-%d of %s)", cache_path, cache.topk,
                    cache.manifest["teacher"])
    trainer.train_loss.attach(teacher, opt.kd_alpha, opt.kd_temperature)
    logger.info(
        "Word-level KD: loss = (1 - %.3g) * NLL + %.3g * %.3g^2 * KL", opt.kd_alpha,
        opt.kd_alpha, opt.kd_temperature,
    )
    return trainer
