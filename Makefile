# opensora-parity — every target installs what it needs into .venv first (idempotent).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
REPORTS ?= reports
DEFAULT_REFERENCE ?= fixtures/reference/tiny-sparse-fp32
CASES   := tiny-dense tiny-sparse tiny-32 padded-batch
PRECISIONS := fp32 bf16

.PHONY: setup test parity dump-reference bench fuzz clean

setup: $(STAMP)

# torch is pinned to the CPU wheel (an open range can pull a multi-GB CUDA build); mindspore 2.10 needs numpy<2;
# numba (the metrics pass's compiled chunk loop, parity/fused.py) is pinned too, for a reproducible install.
# Pipeline parity (docs/pipeline.md): mindone 0.5.0 is the MindSpore subject (mindone.transformers' MT5EncoderModel,
# mindone.diffusers' EulerAncestralDiscreteScheduler) and pins transformers==4.57.1, the torch reference's mT5;
# diffusers 0.35.1 is the release mindone.diffusers 0.5.0 mirrors and works with that transformers' huggingface_hub.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0" "mindspore==2.10.0" "numpy<2" "numba==0.68.1" \
	  "mindone==0.5.0" "transformers==4.57.1" "diffusers==0.35.1"
	$(BIN)/pip install -q -e ".[dev,pipeline-torch,pipeline-mindspore]"
	touch $(STAMP)

test: setup
	@mkdir -p $(REPORTS)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --junitxml=$(REPORTS)/junit.xml --parity-report $(REPORTS)/pytest

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
