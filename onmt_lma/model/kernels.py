"""Fused LMA kernels, chosen automatically, with the pure-PyTorch path as fallback.

The CPU kernel (``csrc/lma_cpu.cpp``) is built by the package's install
(``setup.py``, as ``onmt_lma._lma_cpu``, when torch is importable at build
time: ``pip install --no-build-isolation``, as ``make venv`` does).  Without
that build it is compiled with PyTorch's C++ extension tools the first time it
is needed (about a minute; cached in ``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``).  Without a compiler, or with
``ONMT_LMA_KERNEL=torch``, LMA runs on the pure-PyTorch path, which gives the
same results.  On processors with AVX2 and FMA the kernel takes vector paths
for float32 inputs and up to 16 segments (``cpu_kernel().vectorized(k)``).
"""

import contextlib
import hashlib
import json
import os
import warnings
from pathlib import Path

_SOURCE = Path(__file__).resolve().parents[1] / "csrc" / "lma_cpu.cpp"
#: compiler and linker flags, shared with setup.py's build (one source: csrc/compile_flags.json)
FLAGS = json.loads((_SOURCE.parent / "compile_flags.json").read_text())
_state = {"cpu": None, "tried": False, "origin": None}


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
            _state["cpu"], _state["origin"] = _installed_kernel(), "built by the install"
        except ImportError:
            try:
                _state["cpu"], _state["origin"] = _compiled_now(), "compiled on first use"
            except Exception as error:  # no compiler, no headers, no ninja, ...
                if choice == "cpu":
                    raise RuntimeError(f"ONMT_LMA_KERNEL=cpu but the CPU kernel cannot be built: {error}") from error
                warnings.warn(f"onmt_lma: fused CPU kernel unavailable, using the PyTorch path ({error})")
    return _state["cpu"]


def _installed_kernel():
    import torch  # noqa: F401  (loads the libraries the extension links to)

    from onmt_lma import _lma_cpu

    if getattr(_lma_cpu, "source_sha256", None) != hashlib.sha256(_SOURCE.read_bytes()).hexdigest():
        raise ImportError(f"{_lma_cpu.__file__} was built from another {_SOURCE.name}: reinstall to rebuild it")
    return _lma_cpu


def _compiled_now():
    from torch.utils.cpp_extension import load

    return load(name="onmt_lma_cpu", sources=[str(_SOURCE)], extra_cflags=FLAGS["cflags"], extra_ldflags=FLAGS["ldflags"])


def kernel_origin():
    """How the CPU kernel in use came to be (``built by the install``, ``compiled on first use``), or None."""
    cpu_kernel()
    return _state["origin"] if _state["cpu"] is not None else None


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
