# opensora-parity — every target installs what it needs into .venv first (idempotent).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
REPORTS ?= reports
DEFAULT_REFERENCE ?= fixtures/reference/tiny-sparse-fp32
CASES   := tiny-dense tiny-sparse tiny-32 padded-batch long-axes
PRECISIONS := fp32 bf16
FP16_CASES := tiny-sparse padded-batch
PIPELINE_CASE ?= tiny-pipeline
PIPELINE_REFERENCE ?= fixtures/reference/$(PIPELINE_CASE)-fp32

# msprobe (mindstudio-probe) pulls numpy 2 and pandas: it lives in venvs of its own, never in .venv.
MSPROBE_VENV    := .venv-msprobe
MSPROBE_MS_VENV := .venv-msprobe-ms
MSPROBE_FIXTURE_CASE ?= tiny-sparse

.PHONY: setup test parity parity-pipeline dump-reference bench fuzz clean msprobe-venv msprobe-ms-venv msprobe-fixtures

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

# the sampling loop step by step (docs/pipeline.md): per-step (teacher-forced) and free-running
parity-pipeline: setup
	$(BIN)/parity compare $(PIPELINE_REFERENCE) --mode both --report $(REPORTS)/pipeline

dump-reference: setup
	@for p in fp32 fp16; do \
	  $(BIN)/parity dump --case $(PIPELINE_CASE) --precision $$p --out fixtures/reference/$(PIPELINE_CASE)-$$p --force \
	  || exit 1; done
	@for c in $(CASES); do for p in $(PRECISIONS); do \
	  $(BIN)/parity dump --case $$c --precision $$p --out fixtures/reference/$$c-$$p --force || exit 1; \
	done; done
	@for c in $(FP16_CASES); do \
	  $(BIN)/parity dump --case $$c --precision fp16 --out fixtures/reference/$$c-fp16 --force || exit 1; \
	done

bench: setup
	$(BIN)/python bench/run_bench.py
	$(BIN)/python bench/msprobe_side_by_side.py

fuzz: setup
	PARITY_HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q parity/tests/test_store_fuzz.py

# msprobe with the PyTorch dumper (torch pinned to the CPU wheel, like .venv)
msprobe-venv: $(MSPROBE_VENV)/.installed
$(MSPROBE_VENV)/.installed:
	$(PY) -m venv $(MSPROBE_VENV)
	$(MSPROBE_VENV)/bin/pip install -q --upgrade pip
	$(MSPROBE_VENV)/bin/pip install -q "mindstudio-probe==26.2.0" "torch==2.13.0"
	touch $@

# msprobe with the MindSpore dumper: mindspore 2.10 needs numpy<2, which msprobe accepts (it asks numpy>=1.23)
msprobe-ms-venv: $(MSPROBE_MS_VENV)/.installed
$(MSPROBE_MS_VENV)/.installed:
	$(PY) -m venv $(MSPROBE_MS_VENV)
	$(MSPROBE_MS_VENV)/bin/pip install -q --upgrade pip
	$(MSPROBE_MS_VENV)/bin/pip install -q "mindstudio-probe==26.2.0" "mindspore==2.10.0" "numpy<2"
	touch $@

# regenerates fixtures/msprobe/ (see its README) from the committed reference dumps, with msprobe itself
msprobe-fixtures: msprobe-venv msprobe-ms-venv
	rm -rf fixtures/msprobe/torch-L0-$(MSPROBE_FIXTURE_CASE)-fp32 fixtures/msprobe/torch-L0-$(MSPROBE_FIXTURE_CASE)-bf16-block0 \
	  fixtures/msprobe/mindspore-L0-$(MSPROBE_FIXTURE_CASE)-fp32
	PYTHONPATH=. $(MSPROBE_VENV)/bin/python fixtures/msprobe/make_dumps.py torch \
	  --reference fixtures/reference/$(MSPROBE_FIXTURE_CASE)-fp32 --config fixtures/msprobe/config_L0.json \
	  --out fixtures/msprobe/torch-L0-$(MSPROBE_FIXTURE_CASE)-fp32
	PYTHONPATH=. $(MSPROBE_VENV)/bin/python fixtures/msprobe/make_dumps.py torch \
	  --reference fixtures/reference/$(MSPROBE_FIXTURE_CASE)-bf16 --config fixtures/msprobe/config_L0_block0.json \
	  --out fixtures/msprobe/torch-L0-$(MSPROBE_FIXTURE_CASE)-bf16-block0
	PYTHONPATH=. $(MSPROBE_MS_VENV)/bin/python fixtures/msprobe/make_dumps.py mindspore \
	  --reference fixtures/reference/$(MSPROBE_FIXTURE_CASE)-fp32 --config fixtures/msprobe/config_L0.json \
	  --out fixtures/msprobe/mindspore-L0-$(MSPROBE_FIXTURE_CASE)-fp32

clean:
	rm -rf $(REPORTS) .pytest_cache .hypothesis
