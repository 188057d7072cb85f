# Two entry points for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast install clean

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
	$(BIN)/python -m pytest -q tests

# The fast lane for iterating (~2 min): everything not marked slow (kernel builds, torchrun, wheel
# installs, long trainings). CI runs `make test`, which includes the slow tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) runs .pytest_cache
