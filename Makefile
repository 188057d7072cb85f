# Two entry points for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pytest-xdist workers: the suite is mostly one-threaded subprocesses and small models, so two workers
# on CI's 2 cores roughly halve its wall time (each worker's torch gets one thread: tests/conftest.py).
# WORKERS=0 runs in one process (debugging, --pdb).
WORKERS ?= 2
XDIST := $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --dist worksteal)

.PHONY: demo test test-fast test-portable install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ssmrec demo --preset default

# pytest exit code 5 (no tests collected) is a failure, as is any other non-zero code.
test: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) tests

# The fast lane for iterating (~2 min): everything not marked slow (kernel builds, torchrun, wheel
# installs, long trainings). CI runs `make test`, which includes the slow tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow" tests

# The equivalence tests (marker `equivalence`: two code paths compared in one process -- fused kernel vs
# reference scan, step vs forward, serving vs offline, DDP vs 1 process, trainer vs reference loop) under
# other numerics than a plain run's: once with the pure-PyTorch scans (SSMREC_SCAN_IMPL=ref), once with
# torch's non-vectorised CPU kernels (ATEN_CPU_CAPABILITY=default: other rounding, as on another CPU). A
# test that passes only with this machine's rounding fails here. Both runs always happen; either failing,
# or collecting no test (pytest exit 5), fails the target.
test-portable: $(STAMP)
	@rc=0; \
	echo "== SSMREC_SCAN_IMPL=ref"; SSMREC_SCAN_IMPL=ref $(BIN)/python -m pytest -q $(XDIST) -m equivalence tests || rc=$$?; \
	echo "== ATEN_CPU_CAPABILITY=default"; ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -q $(XDIST) -m equivalence tests || rc=$$?; \
	exit $$rc

clean:
	rm -rf $(VENV) runs .pytest_cache
