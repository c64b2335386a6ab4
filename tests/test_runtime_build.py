"""The torch-free runtime built generic-only (-DONMT_LMA_GENERIC_ONLY: no x86 intrinsics compiled, what a
build for ARM or any other CPU has), without torch's headers or OpenMP: it compiles, and translates as the
installed build does on every path this CPU has."""

import json
import subprocess
import sys
import sysconfig

import pytest

from conftest import REPO
from test_search import ISA_PROBE

pytestmark = pytest.mark.integration

RUNTIME = REPO / "onmt_lma" / "csrc" / "runtime"


def test_the_generic_only_build_compiles_and_translates_as_the_installed_one(tmp_path):
    import pybind11

    module = tmp_path / f"_runtime{sysconfig.get_config_var('EXT_SUFFIX')}"
    command = ["g++", "-O2", "-std=c++17", "-ffp-contract=off", "-shared", "-fPIC", "-DONMT_LMA_GENERIC_ONLY",
               f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}",
               *map(str, sorted(RUNTIME.glob("*.cpp"))), "-o", str(module), "-pthread"]
    built = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "torch" not in " ".join(command) and "fopenmp" not in " ".join(command)
    symbols = subprocess.run(["nm", "-C", str(module)], capture_output=True, text=True).stdout
    assert "runtime::avx2" not in symbols and "runtime::generic" in symbols

    # the probe with onmt_lma._runtime replaced by the generic-only module
    probe = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('onmt_lma._runtime', "
             f"{str(module)!r}); module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
             "sys.modules['onmt_lma._runtime'] = module; module.source_sha256 = __import__("
             "'onmt_lma.deploy.native_runtime', fromlist=['x']).source_digest()\n" + ISA_PROBE)
    found = {}
    for name, script in (("generic-only", probe), ("installed", ISA_PROBE)):
        result = subprocess.run([sys.executable, "-c", script, str(REPO / "tests")], capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        found[name] = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["generic-only"][0] == "GENERIC"
    assert found["generic-only"][1] == found["installed"][1]
