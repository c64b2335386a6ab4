"""Exact resumption: a run resumed from one of its own checkpoints trains on as if it had never stopped.

OpenNMT-py 3.5.1 resumes the weights, the optimizer and the step, but its data iterator starts again at the
corpus's first batch and the random state (dropout) starts again from the seed: an interrupted run sees
other batches in another order than an uninterrupted one, so two runs of a paired comparison that were
interrupted at different steps no longer share their batch order.  With the plugin installed:

* every checkpoint's optimizer state also holds the random state of torch (and CUDA) at the save and how
  many steps' batches this run has drawn from its data (``onmt_lma_resume``; OpenNMT-py ignores the key);
* a run resumed from one of its *own* checkpoints (``-train_from SAVE_MODEL_step_N.pt``, the way
  ``onmt_lma.study.recipes`` resumes) draws and discards those batches first, then restores the random
  state, and so continues with the batches and dropout of the uninterrupted run.  Fine-tuning from another
  run's checkpoint starts at its data's first batch, as before.
"""

import onmt_lma.base.onmt_import  # noqa: F401, I001  (first: before onmt)
import re
import time
from pathlib import Path

import torch
from onmt.utils.logging import logger

KEY = "onmt_lma_resume"


def resume_state(optim):
    """What a checkpoint keeps for an exact resumption (stored in the optimizer's state)."""
    state = {"torch_rng": torch.get_rng_state(), "data_steps": getattr(optim, "onmt_lma_data_steps", 0)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state):
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def resumes_own_run(opt):
    """``-train_from`` is one of this run's own checkpoints (``<save_model>_step_N.pt`` beside it)."""
    train_from, save_model = getattr(opt, "train_from", None), getattr(opt, "save_model", None)
    if not train_from or not save_model:
        return False
    own = Path(save_model)
    checkpoint = Path(train_from)
    return (checkpoint.parent.resolve() == own.parent.resolve()
            and re.fullmatch(re.escape(own.name) + r"_step_\d+\.pt", checkpoint.name) is not None)


def exact_accumulation(trainer, opt):
    """Wrap ``trainer._accum_batches`` (OpenNMT-py's grouping of batches into steps): count the steps' batch
    groups drawn (saved with each checkpoint), and when resuming this run's own checkpoint, draw and discard
    the groups of its steps so far and restore the random state of the save first."""
    original = trainer._accum_batches
    optim = trainer.optim
    loaded = getattr(optim, "onmt_lma_loaded_resume", None) if resumes_own_run(opt) else None

    def accum_batches(iterator):
        done = 0
        if loaded and loaded.get("data_steps"):
            done = loaded["data_steps"]
            first_step = optim.training_step - done  # the step this run's data started at
            started = time.time()
            iterator = iter(iterator)
            for group in range(done):
                for _ in range(trainer._accum_count(first_step + group)):
                    next(iterator)
            restore_rng(loaded)
            logger.info("resuming exactly: skipped the batches of the %d steps trained (%.0f s) and restored "
                        "the random state of the checkpoint", done, time.time() - started)
        elif opt.train_from and resumes_own_run(opt):
            logger.info("resuming from a checkpoint without onmt_lma's resume state: the data starts again at "
                        "its first batch (OpenNMT-py's own behaviour)")
        for batches, normalization in original(iterator):
            done += 1
            optim.onmt_lma_data_steps = done
            yield batches, normalization

    trainer._accum_batches = accum_batches
    return trainer
