"""Shared pieces of the benchmark scripts (``scripts/bench_*.py``): step timing, machine facts."""

import os
import platform
import sys
import time

import torch

import onmt.trainer

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


def machine():
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
    }
