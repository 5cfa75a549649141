# Two commands do everything on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
NUM_CLIENTS ?= 100
RUN_CONFIG ?=
OUTPUT_DIR ?= $(CURDIR)/results

export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# runs use this project's venv instead of a per-run env built with uv, and send no telemetry
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_TELEMETRY_ENABLED := 0

.PHONY: venv run test calibrate clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.installed

## run: the default ModalityMirror simulation (100 clients) on the embedded dataset
run: venv
	flwr federation simulation-config --num-supernodes $(NUM_CLIENTS)
	flwr run . --stream --run-config "output-dir='$(OUTPUT_DIR)' $(RUN_CONFIG)"

## test: the whole suite (unit tests and end-to-end `flwr run` tests)
test: venv
	$(PY) -m pytest -q tests

## calibrate: centralised audio-only and audiovisual accuracy of the embedded dataset
calibrate: venv
	$(PY) -m mirror_app.centralized --dataset embedded --epochs 8

clean:
	rm -rf results .pytest_cache
