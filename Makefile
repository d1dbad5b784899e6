# opensora-parity — every target installs what it needs into .venv first (idempotent).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
REPORTS ?= reports
DEFAULT_REFERENCE ?= fixtures/reference/tiny-sparse-fp32
CASES   := tiny-dense tiny-sparse tiny-32 padded-batch
PRECISIONS := fp32 bf16

.PHONY: setup test test-checkouts parity dump-reference bench fuzz clean

setup: $(STAMP)

# torch is pinned to the CPU wheel (an open range can pull a multi-GB CUDA build); mindspore 2.10 needs numpy<2;
# numba (the metrics pass's compiled chunk loop, parity/fused.py) is pinned too, for a reproducible install.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0" "mindspore==2.10.0" "numpy<2" "numba==0.68.1"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

test: setup
	@mkdir -p $(REPORTS)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --junitxml=$(REPORTS)/junit.xml --parity-report $(REPORTS)/pytest

# The plug-ins that load a user's checkout are tested here, not in `make test`, each in a venv of its own with its
# extra (their pins conflict: mindone's model imports huggingface_hub's DDUFEntry, >= 0.27, while upstream's
# diffusers 0.30.2 needs huggingface_hub 0.24.6). PARITY_MINDONE_PATH (and PARITY_UPSTREAM_PATH, for the upstream
# plug-in's tests) name the checkouts; tests whose checkout is not named are reported as skipped, with that reason:
#   make test-checkouts PARITY_MINDONE_PATH=~/src/mindone
MINDONE_VENV := .venv-mindone
PARITY_MINDONE_PATH ?=

$(MINDONE_VENV)/.installed: pyproject.toml
	$(PY) -m venv $(MINDONE_VENV)
	$(MINDONE_VENV)/bin/pip install -q --upgrade pip
	$(MINDONE_VENV)/bin/pip install -q "mindspore==2.10.0" "numpy<2" "numba==0.68.1"
	$(MINDONE_VENV)/bin/pip install -q -e ".[dev,mindone]"
	touch $@

test-checkouts: $(MINDONE_VENV)/.installed
	PARITY_MINDONE_PATH="$(PARITY_MINDONE_PATH)" $(MINDONE_VENV)/bin/python -m pytest -q -rs -p no:cacheprovider \
	  ms_impl/tests/test_mindone_plugin.py

parity: setup
	$(BIN)/parity compare $(DEFAULT_REFERENCE) --mode both --report $(REPORTS)

dump-reference: setup
	@for c in $(CASES); do for p in $(PRECISIONS); do \
	  $(BIN)/parity dump --case $$c --precision $$p --out fixtures/reference/$$c-$$p --force || exit 1; \
	done; done

bench: setup
	$(BIN)/python bench/run_bench.py

fuzz: setup
	PARITY_HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q parity/tests/test_store_fuzz.py

clean:
	rm -rf $(REPORTS) .pytest_cache .hypothesis
