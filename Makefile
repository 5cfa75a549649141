# Two commands do everything on a fresh machine: `make run` and `make test`. Plain `make` lists every target with
# what it costs on 2 cores (time, disk) and what it writes outside the checkout.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
NUM_CLIENTS ?= 100
RUN_CONFIG ?=
OUTPUT_DIR ?= $(CURDIR)/results
# where datasets and pretrained encoders go (outside the checkout); runs get it as data-dir unless RUN_CONFIG names one
DATA_DIR ?= $(HOME)/.cache/modality-mirror
PRETRAINED := $(DATA_DIR)/pretrained
# make pretrain's encoders for the embedded dataset's front end (40 mel bins x 98 frames, 32 px): what
# conf/paper-laptop.toml's audio-/video-pretrained = 'auto' finds under DATA_DIR
PRETRAINED_FILES = $(PRETRAINED)/audio-tdnn-small-d64-mel40-t98.pt $(PRETRAINED)/video-cnn-small-d64-img32.pt

export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# runs use this project's venv instead of a per-run env built with uv, and send no telemetry
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_TELEMETRY_ENABLED := 0
# a SuperExec looks for apps to start every 0.2 s instead of Flower's 1 s (what it saves: make bench, docs/deployment.md)
export FLWR_SUPEREXEC_TASK_POLL_INTERVAL ?= 0.2

.PHONY: help venv run test lint report export bench calibrate pretrain prepare deploy-local table1 table1-quick \
	ablations clean

# `#> target | cost on 2 cores | written outside the checkout | what it does`: make help's line of each target
help:
	@echo "usage: make <target> [VAR=value ...]    times on 2 cores without a GPU; DATA_DIR=$(DATA_DIR)"
	@echo "every target but help installs the venv first where it is missing (3 to 5 min and about 9 GB, once)"
	@echo
	@awk -F' [|] ' '/^#> / { sub(/^#> /, ""); printf "  %-13s %-23s %-30s %s\n", $$1, $$2, $$3, $$4 }' $(MAKEFILE_LIST)

#> target | costs | writes outside the checkout | what it does
#> venv | 4 min, 9 GB | pip's cache (~/.cache/pip) | the pinned venv in .venv (Flower, Ray, PyTorch with CUDA)
$(VENV)/.installed: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.installed

## run: the default ModalityMirror simulation (100 clients) on the embedded dataset (or the dataset named in
## RUN_CONFIG), from encoders pretrained for the dataset's front end (built first where missing and cheap;
## RUN_CONFIG="audio-pretrained='none' video-pretrained='none'" starts from random weights). The run config and
## the pretrained files are checked before Flower starts; the exit status says whether the run finished
## PRESET=conf/paper-ucf101.toml runs a preset (RUN_CONFIG's keys override it; its named weights are fetched first).
## The simulation runs on a SuperLink of its own, stopped at the end: nothing is written to ~/.flwr
PRESET ?=
#> run | 10 min, 270 MB | DATA_DIR: data, encoders | ModalityMirror, 100 simulated clients, 200 + 50 rounds, embedded data
run: venv
	$(PY) -m mirror_app.run --pretrain --num-supernodes $(NUM_CLIENTS) $(if $(PRESET),--preset $(PRESET)) \
		--output-dir '$(OUTPUT_DIR)' --data-dir '$(DATA_DIR)' --run-config "$(RUN_CONFIG)"

## test: lint (ruff), format check, import contracts (import-linter), types of the core and the benchmarks (mypy), then the
## whole suite (unit tests and end-to-end `flwr run` tests; a deprecated Flower API fails it), in TEST_WORKERS
## processes (pytest-xdist; one test file per process at a time; TEST_WORKERS=0 runs it in this one)
TEST_WORKERS ?= 2
#> test | 20 min | temporary folders only | lint, then every test in 2 processes (end-to-end flwr run included)
test: venv lint
	$(PY) -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) --durations=15 tests

## report: the generated documentation (docs/configuration.md's key table, docs/results/*, README's results) from
## pyproject.toml and the run records in docs/records, running nothing
#> report | 10 s | nothing | docs/results, README's results and the key table, from docs/records (runs nothing)
report: venv
	$(PY) -m mirror_app.studies.report

## lint: ruff check, ruff format --check, lint-imports (layers, no cycles), mypy on mirror_app/core and mirror_app/bench
#> lint | 1 min | nothing | ruff, ruff format --check, import contracts, mypy
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

## export: a finished run's audio-only model as ONNX + TorchScript, its front end, classes and model card
## (RUN=results/<run folder> [OUT=folder] [FORCE=1 replaces an earlier export]; default OUT: <run>/export). Then:
## $(PY) -m mirror_app.model.predict --model <export folder> FILES...
RUN ?=
OUT ?=
FORCE ?=
#> export | 10 s | nothing (OUT= elsewhere) | RUN=results/<run>: its audio model as ONNX + TorchScript, model card
export: venv
	@test -n "$(RUN)" || { echo "usage: make export RUN=results/<run folder> [OUT=<folder>] [FORCE=1]"; exit 2; }
	$(PY) -m mirror_app.model.export "$(RUN)" $(if $(OUT),--out "$(OUT)") $(if $(FORCE),--force)

## bench: Flower + Ray overhead against a bare loop, start-up, client set-up, memory at 10/100/1000
## partitions, a deployed round (make deploy-local, 3 SuperNodes) against a simulated one, preprocessing
## against the ffmpeg CLI, bytes per client kind -> results/bench/bench.{md,json}; GPU=1 adds GPU packing
## (clients per GPU 1, 2, 4; one line and skipped without a GPU). PAPER=1 instead: what the paper's setting
## (conf/paper.toml) costs, 2 rounds measured and the full schedule projected -> results/bench/paper.{md,json}.
## SCALE=1 instead: start, rounds and memory at 100 / 1,000 / 10,000 / 30,000 SuperNodes -> results/bench/scale.*
#> bench | 6 min | DATA_DIR: embedded data | Flower + Ray overhead, memory, a deployed round (PAPER=1, SCALE=1, GPU=1)
bench: venv
ifdef SCALE
	$(PY) -m mirror_app.bench.scale --out $(CURDIR)/results/bench --records $(CURDIR)/docs/records/bench \
		--data-dir "$(DATA_DIR)"
else
	$(PY) -m mirror_app.bench --out $(CURDIR)/results/bench --run-config "$(RUN_CONFIG)" $(if $(GPU),--gpu) $(if $(PAPER),--paper) \
		--records $(CURDIR)/docs/records/bench --data-dir "$(DATA_DIR)"
endif

## calibrate: centralised audio-only and audiovisual accuracy of the embedded dataset (two separate models)
#> calibrate | 40 s, 134 MB | DATA_DIR: embedded data | centralised audio-only and audiovisual reference accuracy
calibrate: venv
	$(PY) -m mirror_app.studies.centralized --dataset embedded --epochs 8 --data-dir "$(DATA_DIR)"

## pretrain: encoders trained on the proxy set (classes disjoint from the task's) -> $(PRETRAINED)/*.pt, for
## the embedded dataset's front end, or a prepared dataset's with DATASET=ucf101|activitynet|manifest
#> pretrain | 40 s, 134 MB | DATA_DIR: proxy set, encoders | encoders pretrained on the disjoint proxy set (DATASET= for others)
pretrain: venv
	$(PY) -m mirror_app.model.pretrain --out "$(PRETRAINED)" --data-dir "$(DATA_DIR)" $(if $(DATASET),--dataset $(DATASET))

$(PRETRAINED_FILES) &: | venv
	$(PY) -m mirror_app.model.pretrain --out "$(PRETRAINED)" --data-dir "$(DATA_DIR)"

## prepare: decode a real dataset once into the feature cache runs read (DATASET=ucf101|activitynet|manifest SRC=...)
PREPARE_ARGS ?=
#> prepare | 16 clips a second | DATA_DIR: feature cache | DATASET=ucf101|activitynet|manifest SRC=<folder>: decode clips once
prepare: venv
	@test -n "$(DATASET)" -a -n "$(SRC)" || { echo "usage: make prepare DATASET=ucf101|activitynet|manifest SRC=<folder> [DATA_DIR=...] [PREPARE_ARGS='--image-size 112']"; exit 2; }
	$(PY) -m data.prepare $(DATASET) --src "$(SRC)" --data-dir "$(DATA_DIR)" $(PREPARE_ARGS)

## deploy-local: a real SuperLink and N SuperNodes on loopback (AUDIO_ONLY of them without video), from the encoders
## make run uses (built first where missing), on the embedded dataset under DATA_DIR; its temporary FLWR_HOME (keys
## included) is removed at the end, the logs kept under results/deploy/logs-<time>
N ?= 3
AUDIO_ONLY ?= 1
SECURE ?=
#> deploy-local | 20 s a round | /tmp while it runs | a real SuperLink and N=3 SuperNodes on loopback (set RUN_CONFIG's rounds)
deploy-local: venv
	$(PY) -m mirror_app.deploy.local --nodes $(N) --audio-only $(AUDIO_ONLY) $(if $(SECURE),--secure) --pretrain \
		--data-dir "$(DATA_DIR)" --out $(CURDIR)/results/deploy --run-config "$(RUN_CONFIG)"

## table1: the comparison at a laptop budget (conf/paper-laptop-heads.toml: the paper's local training from pretrained
## encoders, with the remedies for label skew that the head-drift screening chose): every compared method x missing
## rates 0.1/0.3/0.5 x 3 seeds, best-dev and last-round tables, figures, each method's change from plain linear heads
## (TABLE1_AGAINST: conf/paper-laptop.toml's records). A run recorded in RECORDS (the repository's records of the
## preset by default) is taken as done when its resolved config is today's: RECORDS= measures every run again (about
## 2 minutes a run on 2 cores), RECORDS=<folder> keeps your own; TABLE1_PRESET=conf/<other>.toml runs another preset
## (into results/table1-<other>, recorded in docs/records/<other> unless RECORDS says otherwise)
TABLE1_RATES ?= 0.1,0.3,0.5
LAPTOP_PRESET = conf/paper-laptop-heads.toml
TABLE1_PRESET ?= $(LAPTOP_PRESET)
RECORDS ?= $(CURDIR)/docs/records/$(basename $(notdir $(TABLE1_PRESET)))
TABLE1_DEFAULT = $(filter $(LAPTOP_PRESET),$(TABLE1_PRESET))
TABLE1_OUT = results/table1$(if $(TABLE1_DEFAULT),,-$(basename $(notdir $(TABLE1_PRESET))))
TABLE1_AGAINST ?= $(if $(TABLE1_DEFAULT),$(CURDIR)/docs/records/paper-laptop)
#> table1 | 10 s; RECORDS= 3.6 h | DATA_DIR: data, encoders | Table 1 from docs/records (RECORDS= runs its 108 cells again)
table1: venv $(PRETRAINED_FILES)
	$(PY) -m mirror_app.studies.sweep --out $(CURDIR)/$(TABLE1_OUT) --preset $(TABLE1_PRESET) --rates $(TABLE1_RATES) \
		--fig3-rates $(TABLE1_RATES) --seeds 0,1,2 --num-supernodes $(NUM_CLIENTS) --run-config "$(RUN_CONFIG)" \
		--data-dir "$(DATA_DIR)" $(if $(RECORDS),--records $(RECORDS)) $(if $(TABLE1_AGAINST),--against $(TABLE1_AGAINST))

## table1-quick: the same with one seed and no records (about a third of the time)
#> table1-quick | 50 min | DATA_DIR: data, encoders | Table 1 with one seed, no records (36 runs)
table1-quick: venv $(PRETRAINED_FILES)
	$(PY) -m mirror_app.studies.sweep --out $(CURDIR)/results/table1-quick --preset $(LAPTOP_PRESET) \
		--rates $(TABLE1_RATES) --fig3-rates $(TABLE1_RATES) --seeds 0 --num-supernodes $(NUM_CLIENTS) \
		--run-config "$(RUN_CONFIG)" --data-dir "$(DATA_DIR)"

## ablations: the studies behind Table 1, each from its records in docs/records (a recorded run is not run again):
## distillation objectives and teachers, the paper's readings, missing video per client, per clip and over time,
## teacher strength, drift, label skew, attacks x robust aggregators, the DP audit (empirical lower bounds on epsilon),
## accuracy against epsilon and secure aggregation (3 seeds each where they say so), Fig. 2 by sound source (after table1)
STUDY_RECORDS ?= $(CURDIR)/docs/records
#> ablations | 3.2 h | DATA_DIR: data, encoders | every study, measuring the 89 cells docs/records lacks (2 min each)
ablations: venv $(PRETRAINED_FILES)
	$(PY) -m mirror_app.studies.ablations distill --seeds 0,1,2 --best agreement --preset $(LAPTOP_PRESET) --out $(CURDIR)/results/ablation-distill --records $(STUDY_RECORDS)/$(basename $(notdir $(LAPTOP_PRESET))) --data-dir "$(DATA_DIR)"
	$(PY) -m mirror_app.studies.ablations fidelity --seeds 0,1,2 --out $(CURDIR)/results/ablation-fidelity --records $(STUDY_RECORDS)/paper-laptop --data-dir "$(DATA_DIR)"
	$(PY) -m mirror_app.studies.ablations missingness --seeds 0,1,2 --out $(CURDIR)/results/ablation-missingness --records $(STUDY_RECORDS)/paper-laptop --data-dir "$(DATA_DIR)"
	$(PY) -m mirror_app.studies.ablations head-drift --rates 0.3 --seeds 0,1 --out $(CURDIR)/results/ablation-head-drift --records $(STUDY_RECORDS)/head-drift --data-dir "$(DATA_DIR)"
	$(PY) -m mirror_app.studies.ablations teacher --out $(CURDIR)/results/ablation-teacher --records $(STUDY_RECORDS)/paper-laptop --data-dir "$(DATA_DIR)"
	$(PY) -m mirror_app.studies.ablations drift --out $(CURDIR)/results/ablation-drift --records $(STUDY_RECORDS)/paper-laptop --data-dir "$(DATA_DIR)"
	$(PY) -m mirror_app.studies.ablations skew --out $(CURDIR)/results/ablation-skew --records $(STUDY_RECORDS)/skew --data-dir "$(DATA_DIR)"
	$(PY) -m mirror_app.studies.ablations robust --seeds 0,1,2 --out $(CURDIR)/results/ablation-robust --records $(STUDY_RECORDS)/robust --data-dir "$(DATA_DIR)"
	$(PY) -m mirror_app.studies.audit --records $(STUDY_RECORDS)/privacy
	$(PY) -m mirror_app.studies.ablations privacy --seeds 0,1,2 --out $(CURDIR)/results/ablation-privacy --records $(STUDY_RECORDS)/privacy --data-dir "$(DATA_DIR)"
	$(PY) -m mirror_app.studies.ablations fig2 --sweep $(CURDIR)/results/table1

## clean: results/ (runs, logs, study outputs) and .pytest_cache, each named with its size before it goes; exported
## models are kept unless EXPORTS=1; DATA_DIR, the venv and docs/records are never touched
EXPORTS ?=
#> clean | seconds | nothing | delete results/ but its exports (EXPORTS=1: those too), saying what goes
clean:
	@test -x $(PY) || { rm -rf results .pytest_cache; echo "deleted results/ and .pytest_cache (no venv)"; exit 0; }
	$(PY) -m mirror_app.clean --data-dir "$(DATA_DIR)" $(if $(EXPORTS),--exports)
