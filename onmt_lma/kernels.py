"""Fused LMA kernels, chosen automatically, with the pure-PyTorch path as fallback.

The CPU kernel (``csrc/lma_cpu.cpp``) is compiled with PyTorch's C++ extension
tools the first time it is needed (about a minute; cached afterwards in
``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``); ``make
venv`` builds it ahead.  Without a compiler, or with ``ONMT_LMA_KERNEL=torch``,
LMA runs on the pure-PyTorch path, which gives the same results.
"""

import contextlib
import os
import warnings
from pathlib import Path

_SOURCE = Path(__file__).resolve().parent / "csrc" / "lma_cpu.cpp"
_state = {"cpu": None, "tried": False}


def kernel_choice():
    """``auto`` (default), ``torch`` (never use compiled kernels) or ``cpu`` (fail if unavailable)."""
    choice = os.environ.get("ONMT_LMA_KERNEL", "auto")
    if choice not in ("auto", "torch", "cpu"):
        raise ValueError(f"ONMT_LMA_KERNEL={choice!r}: expected auto, torch or cpu")
    return choice


def cpu_kernel():
    """The compiled CPU kernel module, or ``None`` when it is unavailable or disabled."""
    choice = kernel_choice()
    if choice == "torch":
        return None
    if not _state["tried"]:
        _state["tried"] = True
        try:
            from torch.utils.cpp_extension import load

            _state["cpu"] = load(
                name="onmt_lma_cpu", sources=[str(_SOURCE)], extra_cflags=["-O3", "-fopenmp"],
                extra_ldflags=["-fopenmp"], verbose=False,
            )
        except Exception as error:  # no compiler, no headers, no ninja, ...
            if choice == "cpu":
                raise RuntimeError(f"ONMT_LMA_KERNEL=cpu but the CPU kernel cannot be built: {error}") from error
            warnings.warn(f"onmt_lma: fused CPU kernel unavailable, using the PyTorch path ({error})")
    return _state["cpu"]


def build():
    """Build (or load from cache) the CPU kernel now; returns whether it is usable."""
    return cpu_kernel() is not None


@contextlib.contextmanager
def forced(choice):
    """Within the block, ``ONMT_LMA_KERNEL=choice`` (``auto``, ``torch`` or ``cpu``)."""
    previous = os.environ.get("ONMT_LMA_KERNEL")
    os.environ["ONMT_LMA_KERNEL"] = choice
    try:
        kernel_choice()
        yield
    finally:
        if previous is None:
            del os.environ["ONMT_LMA_KERNEL"]
        else:
            os.environ["ONMT_LMA_KERNEL"] = previous
