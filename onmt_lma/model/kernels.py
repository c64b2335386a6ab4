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

The native translation engine (``csrc/engine_cpu.cpp``, :func:`engine_module`, used by
``onmt_lma.deploy.native``) is built and found the same way, as ``onmt_lma._engine_cpu``.
"""

import contextlib
import hashlib
import importlib
import json
import os
import warnings
from pathlib import Path

_SOURCE = Path(__file__).resolve().parents[1] / "csrc" / "lma_cpu.cpp"
_ENGINE_SOURCE = _SOURCE.parent / "engine_cpu.cpp"
#: compiler and linker flags, shared with setup.py's build (one source: csrc/compile_flags.json)
FLAGS = json.loads((_SOURCE.parent / "compile_flags.json").read_text())
_state = {"cpu": None, "tried": False, "origin": None}
_engine = {}


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


def engine_module():
    """The compiled native engine (``onmt_lma._engine_cpu``, or compiled now); raises RuntimeError, saying
    why, where it cannot be built."""
    if "module" not in _engine:
        try:
            _engine["module"] = _installed_kernel("_engine_cpu", _ENGINE_SOURCE)
        except ImportError:
            try:
                _engine["module"] = _compiled_now("onmt_lma_engine_cpu", _ENGINE_SOURCE)
            except Exception as error:  # no compiler, no headers, ...
                raise RuntimeError(f"the native engine ({_ENGINE_SOURCE.name}) cannot be built here: {error}; "
                                   "use -engine onnx") from error
    return _engine["module"]


def source_digest(source):
    """The sha256 of ``source`` and the headers beside it (setup.py puts the same into the module it builds)."""
    return hashlib.sha256(b"".join(p.read_bytes() for p in [source, *sorted(source.parent.glob("*.h"))])).hexdigest()


def _installed_kernel(name="_lma_cpu", source=None):
    source = source or _SOURCE
    import torch  # noqa: F401  (loads the libraries the extension links to)

    module = importlib.import_module(f"onmt_lma.{name}")
    if getattr(module, "source_sha256", None) != source_digest(source):
        raise ImportError(f"{module.__file__} was built from another {source.name}: reinstall to rebuild it")
    return module


def _compiled_now(name="onmt_lma_cpu", source=None):
    from torch.utils.cpp_extension import load  # here: only a build on first use needs it (slow to load)

    source = source or _SOURCE
    # the digest as a flag: a changed header rebuilds torch's cached build too
    digest = f"-DLMA_SOURCE_SHA256=\"{source_digest(source)}\""
    return load(name=name, sources=[str(source)], extra_cflags=FLAGS["cflags"] + [digest],
                extra_ldflags=FLAGS["ldflags"])


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
