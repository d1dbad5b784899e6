# opensora-parity — every target installs what it needs into .venv first (idempotent).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
REPORTS ?= reports
DEFAULT_REFERENCE ?= fixtures/reference/tiny-sparse-fp32
PIPELINE_CASE ?= tiny-pipeline
PIPELINE_REFERENCE ?= fixtures/reference/$(PIPELINE_CASE)-fp32

# msprobe (mindstudio-probe) pulls numpy 2 and pandas: it lives in venvs of its own, never in .venv.
MSPROBE_VENV    := .venv-msprobe
MSPROBE_MS_VENV := .venv-msprobe-ms
MSPROBE_FIXTURE_CASE ?= tiny-sparse

# the `upstream` reference plug-in needs upstream's pinned diffusers: a venv of its own, never .venv
UPSTREAM_VENV := .venv-upstream

.PHONY: setup test test-checkouts parity parity-pipeline dump-reference bench fuzz clean msprobe-venv \
        msprobe-ms-venv msprobe-fixtures upstream-venv test-upstream

setup: $(STAMP)

# torch is pinned to the CPU wheel (an open range can pull a multi-GB CUDA build); mindspore 2.10 needs numpy<2;
# numba (the metrics passes' compiled chunk loops, parity/metrics/fused.py) and tqdm (the compare progress bar) are
# pinned too, for a reproducible install; pytest 8.4 with xdist 3.8, whose --dist loadgroup pytest 9.2 breaks.
# Pipeline parity (docs/pipeline.md): mindone 0.5.0 is the MindSpore subject (mindone.transformers' MT5EncoderModel,
# mindone.diffusers' EulerAncestralDiscreteScheduler) and pins transformers==4.57.1, the torch reference's mT5;
# diffusers 0.35.1 is the release mindone.diffusers 0.5.0 mirrors and works with that transformers' huggingface_hub.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0" "mindspore==2.10.0" "numpy<2" "numba==0.68.1" "tqdm==4.70.1" \
	  "pytest==8.4.2" "pytest-xdist==3.8.0" \
	  "mindone==0.5.0" "transformers==4.57.1" "diffusers==0.35.1"
	$(BIN)/pip install -q -e ".[dev,pipeline-torch,pipeline-mindspore]"
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

# the sampling loop step by step (docs/pipeline.md): per-step (teacher-forced) and free-running
parity-pipeline: setup
	$(BIN)/parity compare $(PIPELINE_REFERENCE) --mode both --report $(REPORTS)/pipeline

dump-reference: setup
	@$(BIN)/python -m parity.families.fixtures | while read c p; do \
	  $(BIN)/parity dump --case $$c --precision $$p --out fixtures/reference/$$c-$$p --force || exit 1; \
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

# torch (CPU wheel, as .venv), upstream's diffusers 0.30.2 and einops, this package; no MindSpore
upstream-venv: $(UPSTREAM_VENV)/.installed
$(UPSTREAM_VENV)/.installed: pyproject.toml
	$(PY) -m venv $(UPSTREAM_VENV)
	$(UPSTREAM_VENV)/bin/pip install -q --upgrade pip
	$(UPSTREAM_VENV)/bin/pip install -q "torch==2.13.0" "numpy<2" "numba==0.68.1"
	$(UPSTREAM_VENV)/bin/pip install -q -e ".[dev,upstream]"
	touch $@

# the `upstream` plug-in's tests, against the Open-Sora-Plan checkout named by PARITY_UPSTREAM_PATH
test-upstream: upstream-venv
	@test -n "$(PARITY_UPSTREAM_PATH)" || { echo "make test-upstream: set PARITY_UPSTREAM_PATH to an Open-Sora-Plan checkout (v1.3, e.g. 9fa322fb)" >&2; exit 2; }
	PARITY_UPSTREAM_PATH="$(PARITY_UPSTREAM_PATH)" $(UPSTREAM_VENV)/bin/python -m pytest -q -rs \
	  reference_torch/tests/test_upstream_plugin.py

clean:
	rm -rf $(REPORTS) .pytest_cache .hypothesis
