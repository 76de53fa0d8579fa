# Two commands matter: `make demo` and `make test`. Both create or reuse .venv and install the exact pinned
# versions of python_core/constraints.txt. TORCH is the torch requirement installed first: the default takes
# the CPU build; a GPU user passes their own (README, "Using your own torch"), or TORCH=skip to keep the
# torch already in .venv.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
CONSTRAINTS := python_core/constraints.txt
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q

.PHONY: demo demo-pack test test-fast lint setup setup-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.core-installed: $(BIN)/python python_core/pyproject.toml $(CONSTRAINTS)
	@if [ "$(TORCH)" != "skip" ]; then $(PIP) $(TORCH); fi
	$(PIP) -c $(CONSTRAINTS) -e 'python_core[dicom-seg]'
	@touch $@

$(VENV)/.test-installed: $(VENV)/.core-installed
	$(PIP) -c $(CONSTRAINTS) -e 'python_core[test,dev,cohort,cpu-runtime]'
	@touch $@

setup: $(VENV)/.core-installed

setup-test: $(VENV)/.test-installed

# The main job on the embedded default: a synthetic PET/CT study (DICOM, so reading and SUV conversion run
# too) through the shipped demo skills, PET/CT segmentation + prognosis, into demo-out/result.
DEMO_OUT := demo-out
demo: setup
	rm -rf $(DEMO_OUT)
	$(BIN)/mafm3 demo make-study --seed 2024 --out $(DEMO_OUT)/study
	$(BIN)/mafm3 run --ct $(DEMO_OUT)/study/dicom --clinical $(DEMO_OUT)/study/clinical.json \
		--task segmentation prognosis --dicom-seg --out $(DEMO_OUT)/result

# Rebuilds the shipped demo (backbone, three skills, held-out metrics) from scratch with the public commands;
# about 1.5 hours on a 2-core CPU. The result replaces python_core/src/mafm3/demo/assets.
DEMO_BUILD := build/demo-pack
DEMO_HOME := $(abspath $(DEMO_BUILD))/home
DEMO_BACKBONE := $(DEMO_HOME)/backbones/mafm3-demo-backbone
DEMO_ITERATIONS ?= 800
# Crops centred on background, GTVp and GTVn alike (a node is a few hundred voxels; uniform tumour voxels would
# almost never pick one) and a learning rate that decays to 0: what a CPU budget of iterations needs.
SEG_FLAGS = --iterations $(DEMO_ITERATIONS) --val-every 200 --lr 2e-3 --poly-lr --class-ratios 1 1 1
TRAIN := MAFM3_HOME=$(DEMO_HOME) OMP_NUM_THREADS=1 $(BIN)/mafm3 train
EVAL := MAFM3_HOME=$(DEMO_HOME) OMP_NUM_THREADS=1 $(BIN)/mafm3 eval --device cpu
TRAIN_FLAGS := --backbone $(DEMO_BACKBONE) --seed 0 --device cpu --precision fp32 --quiet

demo-pack: setup
	$(MAKE) -j2 $(DEMO_BUILD)/eval-demo-seg-ct.json $(DEMO_BUILD)/eval-demo-seg-petct.json \
		$(DEMO_BUILD)/eval-demo-prognosis.json $(DEMO_BUILD)/eval-unetr-baseline-petct.json
	$(BIN)/python -c "from mafm3.demo.pack import bundle_demo; from mafm3.config import BUNDLED_DIR; \
		import json; print(json.dumps(bundle_demo('$(DEMO_BUILD)', BUNDLED_DIR), indent=2))"

$(DEMO_BACKBONE)/manifest.json:
	MAFM3_HOME=$(DEMO_HOME) $(BIN)/mafm3 demo make-backbone --out $(DEMO_BACKBONE) --studies 12 --steps 300

$(DEMO_BUILD)/cohort/dataset.json:
	$(BIN)/mafm3 demo make-cohort --n 40 --seed 1 --out $(DEMO_BUILD)/cohort

$(DEMO_BUILD)/heldout/dataset.json:
	$(BIN)/mafm3 demo make-cohort --n 12 --seed 2 --out $(DEMO_BUILD)/heldout

# Survival needs many patients more than fine images: the prognosis skill learns from 240 coarse studies
# and is measured on 400 others (with 80, C moved by +-0.06 between fresh cohorts: mostly noise).
$(DEMO_BUILD)/prognosis-cohort/dataset.json:
	$(BIN)/mafm3 demo make-cohort --n 240 --seed 3 --size tiny --out $(DEMO_BUILD)/prognosis-cohort

$(DEMO_BUILD)/prognosis-heldout/dataset.json:
	$(BIN)/mafm3 demo make-cohort --n 400 --seed 4 --size tiny --out $(DEMO_BUILD)/prognosis-heldout

DEMO_INPUTS := $(DEMO_BACKBONE)/manifest.json $(DEMO_BUILD)/cohort/dataset.json

$(DEMO_BUILD)/demo-seg-ct/manifest.json: $(DEMO_INPUTS)
	$(TRAIN) segmentation --dataset $(DEMO_BUILD)/cohort --preset demo-seg-ct --out $(@D) $(SEG_FLAGS) \
		$(TRAIN_FLAGS)

$(DEMO_BUILD)/demo-seg-petct/manifest.json: $(DEMO_INPUTS)
	$(TRAIN) segmentation --dataset $(DEMO_BUILD)/cohort --preset demo-seg-petct --modalities ct,pet \
		--out $(@D) $(SEG_FLAGS) $(TRAIN_FLAGS)

$(DEMO_BUILD)/demo-prognosis/manifest.json: $(DEMO_BACKBONE)/manifest.json $(DEMO_BUILD)/prognosis-cohort/dataset.json
	$(TRAIN) prognosis --dataset $(DEMO_BUILD)/prognosis-cohort --preset demo-prognosis --out $(@D) --epochs 15 \
		$(TRAIN_FLAGS)

$(DEMO_BUILD)/unetr-baseline-petct/manifest.json: $(DEMO_INPUTS)
	$(TRAIN) segmentation --dataset $(DEMO_BUILD)/cohort --preset demo-seg-petct --modalities ct,pet \
		--baseline unetr --baseline-size small --out $(@D) $(SEG_FLAGS) $(TRAIN_FLAGS)

$(DEMO_BUILD)/eval-demo-prognosis.json: $(DEMO_BUILD)/demo-prognosis/manifest.json \
		$(DEMO_BUILD)/prognosis-heldout/dataset.json
	$(EVAL) --dataset $(DEMO_BUILD)/prognosis-heldout --skill $(DEMO_BUILD)/demo-prognosis --out $@

$(DEMO_BUILD)/eval-%.json: $(DEMO_BUILD)/%/manifest.json $(DEMO_BUILD)/heldout/dataset.json
	$(EVAL) --dataset $(DEMO_BUILD)/heldout --skill $(DEMO_BUILD)/$* --out $@

lint: setup-test
	$(BIN)/ruff check --config python_core/pyproject.toml python_core MAFM3Slicer Testing
	$(BIN)/ruff format --check --config python_core/pyproject.toml python_core MAFM3Slicer Testing

PYTEST := $(BIN)/python -m pytest -c python_core/pyproject.toml --rootdir .
TESTS := python_core/tests Testing

# `--precision auto` takes bf16 on a CPU with native bf16 and float32 on others; MAFM3_CPU_BF16 forces either
# path on any machine (bf16 emulated where the CPU lacks it). The whole suite runs on the float32 path, then
# the tests marked `precision` again on the bf16 path, so every machine runs both.
test: lint
	MAFM3_CPU_BF16=0 $(PYTEST) $(TESTS)
	MAFM3_CPU_BF16=1 $(PYTEST) -m precision $(TESTS)

# The development loop: everything but the tests marked slow, float32 path, no lint.
test-fast: setup-test
	MAFM3_CPU_BF16=0 $(PYTEST) -m "not slow" $(TESTS)

clean:
	rm -rf $(VENV)
