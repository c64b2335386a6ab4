"""Builds the fused LMA CPU kernel (onmt_lma/csrc/lma_cpu.cpp) as onmt_lma._lma_cpu and the native
translation engine (onmt_lma/csrc/engine_cpu.cpp) as onmt_lma._engine_cpu.

Everything else about the package is in pyproject.toml.  The kernel is compiled
against the torch of the build environment, so install with
``pip install --no-build-isolation .`` (``make venv`` does) once torch is in the
environment.  Where torch is not importable at build time (pip's default
isolated build) or the build fails (no C++ compiler, no Python headers), the
package installs without it: ``onmt_lma.model.kernels`` then compiles the same source
on first use, or falls back to the pure-PyTorch path with a warning.
"""

import hashlib
import json
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

SOURCES = {"onmt_lma._lma_cpu": "onmt_lma/csrc/lma_cpu.cpp", "onmt_lma._engine_cpu": "onmt_lma/csrc/engine_cpu.cpp"}
# the flags onmt_lma.model.kernels also compiles with on first use (one source)
FLAGS = json.loads((Path(__file__).parent / "onmt_lma" / "csrc" / "compile_flags.json").read_text())


RUNTIME = "onmt_lma._runtime"


def building(base):
    """``base`` (setuptools' or torch's build_ext) where a torch kernel that does not build leaves the package
    usable (it is built on first use, or LMA takes the PyTorch path), and the runtime, which the package needs,
    stops the install with one line saying why."""

    class Build(base):
        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as error:  # no compiler, no headers, ...
                if ext.name == RUNTIME:
                    raise SystemExit(f"onmt-lma: the native runtime cannot be built ({str(error).splitlines()[0]}): "
                                     "install a C++17 compiler (g++ or clang++) and install again") from None
                print(f"onmt-lma: the CPU kernel {ext.name} was not built ({error}); it is built on first use "
                      "(LMA: or takes the PyTorch path)", file=sys.stderr)

    return Build


def kernel_extension():
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("onmt-lma: torch is not importable at build time; the CPU kernel will be built on "
              "first use (install with --no-build-isolation to build it now)", file=sys.stderr)
        return [], {}

    OptionalBuildExtension = building(BuildExtension)

    # each source's hash (with the headers beside it) goes into its module: onmt_lma.model.kernels ignores a
    # build of other sources
    extensions = []
    for name, source in SOURCES.items():
        path = Path(__file__).parent / source
        headers = sorted(path.parent.glob("*.h"))
        digest = hashlib.sha256(b"".join(p.read_bytes() for p in [path, *headers])).hexdigest()
        extensions.append(CppExtension(name, [source], depends=[str(h.relative_to(path.parents[2])) for h in headers],
                                       extra_link_args=FLAGS["ldflags"],
                                       extra_compile_args=FLAGS["cflags"] + [f"-DLMA_SOURCE_SHA256=\"{digest}\""]))
    return extensions, {"build_ext": OptionalBuildExtension.with_options(use_ninja=False)}


def runtime_sources():
    """The torch-free engine's sources (onmt_lma/csrc/runtime) and the headers it includes."""
    folder = Path(__file__).parent / "onmt_lma" / "csrc" / "runtime"
    sources = sorted(folder.glob("*.cpp"))
    headers = sorted(folder.glob("*.h")) + [folder.parent / "search.h"]
    return sources, headers


def runtime_extension():
    """``onmt_lma._runtime``: the engine without torch (pybind11, plain C++17 and threads, no OpenMP)."""
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        print("onmt-lma: pybind11 is not importable at build time; the native runtime is not built", file=sys.stderr)
        return []
    sources, headers = runtime_sources()
    root = Path(__file__).parent
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources + headers)).hexdigest()
    return [Pybind11Extension(RUNTIME, [str(p.relative_to(root)) for p in sources],
                              depends=[str(p.relative_to(root)) for p in headers], cxx_std=17,
                              extra_compile_args=["-O3", "-ffp-contract=off", f"-DLMA_SOURCE_SHA256=\"{digest}\""],
                              extra_link_args=["-pthread"])]


extensions, commands = kernel_extension()
setup(ext_modules=extensions + runtime_extension(), cmdclass=commands or {"build_ext": building(build_ext)})
