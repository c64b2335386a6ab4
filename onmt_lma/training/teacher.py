"""The frozen teacher of word-level distillation (``-kd_teacher``), loaded and checked against the student.
"""

import onmt_lma.base.onmt_import  # noqa: F401, I001  (first: before onmt)

import argparse

import torch

import onmt.model_builder
from onmt.utils.logging import logger

from onmt_lma.base.errors import UserError


class DistillationError(UserError, ValueError):
    """A distillation setting that cannot work (reported before training starts)."""


class Teacher:
    """A frozen teacher model in evaluation mode (dropout off, LMA running statistics)."""

    def __init__(self, model):
        self.model = model.eval().requires_grad_(False)

    @classmethod
    def load(cls, path, student_vocabs, device):
        """Load ``path`` and check that its vocabularies are the student's."""
        opt = argparse.Namespace(
            models=[path], gpu=-1, gpu_ranks=[], world_size=1, parallel_mode="data_parallel",
            precision="fp32", quant_type="", quant_layers=[],
        )
        vocabs, model, model_opt = onmt.model_builder.load_test_model(opt, model_path=path)
        if model_opt.model_task != "seq2seq":
            raise DistillationError(f"-kd_teacher {path}: a {model_opt.model_task} model, not seq2seq")
        for side, name in (("src", "source"), ("tgt", "target")):
            teacher_tokens = vocabs[side].ids_to_tokens
            student_tokens = student_vocabs[side].ids_to_tokens
            if teacher_tokens != student_tokens:
                first = next(
                    (i for i, (a, b) in enumerate(zip(teacher_tokens, student_tokens)) if a != b),
                    min(len(teacher_tokens), len(student_tokens)),
                )
                raise DistillationError(
                    f"-kd_teacher {path}: its {name} vocabulary ({len(teacher_tokens)} tokens) "
                    f"differs from the student's ({len(student_tokens)} tokens), first at id "
                    f"{first}; train the student with the teacher's vocabulary files"
                )
        logger.info(
            "Distilling from teacher %s (%s, %d parameters)",
            path,
            model_opt.pos_ffn_activation_fn,
            sum(p.numel() for p in model.parameters()),
        )
        return cls(model.to(device))

    def logits(self, batch):
        """Teacher scores ``(batch, tgt_len - 1, vocab)`` for teacher-forced ``batch``."""
        with torch.no_grad():  # inference tensors could not be saved for the student's backward
            dec_out, _ = self.model(batch["src"], batch["tgt"], batch["srclen"], with_align=False)
            return self.model.generator(dec_out)

    def scores(self, batch, start, end):
        """``(logits, None)`` of target positions ``start:end``, ``(batch * positions, vocab)``: every id."""
        logits = self.logits(batch)[:, start:end, :]
        return logits.reshape(-1, logits.size(-1)), None
