# onmt-lma: `make test` and `make demo` set up .venv from nothing, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --quiet --disable-pip-version-check
TORCH_VERSION := 2.13.0
OPENNMT_VERSION := 3.5.1
STAMP := $(VENV)/.installed
# test files run in parallel, one process per core, one thread each (pytest-xdist)
TEST_WORKERS ?= auto

.PHONY: venv test test-fast demo clean

# torch first (the CPU build on this machine's disk), then our dependencies and
# the fused CPU kernel, compiled against that torch (hence no build isolation),
# then OpenNMT-py without its declared ones (it pins torch<2.3 but runs on today's).
$(STAMP): pyproject.toml setup.py onmt_lma/csrc/lma_cpu.cpp onmt_lma/csrc/engine_cpu.cpp $(wildcard onmt_lma/csrc/*.h) $(wildcard onmt_lma/csrc/runtime/*) onmt_lma/csrc/compile_flags.json Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==$(TORCH_VERSION) 'setuptools>=64' wheel 'pybind11>=2.11'
	$(PIP) install --no-build-isolation -e '.[train,test]'
	$(PIP) install --no-deps OpenNMT-py==$(OPENNMT_VERSION)
	$(PY) -c "from onmt_lma.model import kernels; print('fused LMA CPU kernel:', kernels.kernel_origin())"
	$(PY) -c "import onmt_lma.training.plugin, torch; print('onmt-lma ready, torch', torch.__version__)"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25 tests

# the unit tests; tests that need ../shared/data are skipped (reason printed) when it is not there
test-fast: $(STAMP)
	LMA_SKIP_WITHOUT_DATA=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -rs -m "not integration" -n $(TEST_WORKERS) --dist loadfile tests

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

clean:
	rm -rf $(VENV) runs
