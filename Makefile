# Two commands for a fresh machine: `make run` (the whole pipeline on the workspace's data: the demo in an
# empty workspace, else what `ssl-pipeline data import` added) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch/torchvision pinned to the builds the dev machines serve from local disk (see README).
TORCH  := torch==2.14.1 torchvision==0.29.1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export DVC_NO_ANALYTICS ?= 1

.PHONY: run test install ui bench bench-data compare lock clean-outputs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the dependency list changes (a second `make run` must be fast).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e ".[test]"
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/ssl-pipeline data demo --if-empty
	$(BIN)/ssl-pipeline run

test: install
	$(BIN)/python -m pytest -q

ui: install
	$(BIN)/ssl-pipeline ui

bench: install
	$(BIN)/ssl-pipeline bench --method simclr --backbone resnet18 --no-small-stem --image-size 32 --batch-size 256 --steps 20

# The data path at scale (import, prepare at 1 and N workers, re-prepare, pretraining from the shards), e.g.
# make bench-data ARGS="--images 200000 --output bench-data.json"
bench-data: install
	$(BIN)/ssl-pipeline bench data $(ARGS)

# Every method on the same data and budget, e.g. make compare ARGS="--methods simclr,rotation --epochs 5"
compare: install
	$(BIN)/ssl-pipeline data demo --if-empty
	$(BIN)/ssl-pipeline compare $(ARGS)

# dvc.lock exactly as `make run` writes it in a fresh clone of HEAD (same code, params, demo data and
# thread count), so a clone's `make run` leaves git clean. Run it after committing a change to code or
# params, then commit dvc.lock. Outputs differ in the last bits on another CPU or core count.
LOCK_CLONE := build/lock-clone
lock: install
	rm -rf $(LOCK_CLONE) && git clone -q . $(LOCK_CLONE)
	cd $(LOCK_CLONE) && PYTHONPATH=$$PWD $(abspath $(BIN))/ssl-pipeline data demo --if-empty \
		&& PYTHONPATH=$$PWD MLFLOW_TRACKING_URI=sqlite:///$$PWD/mlflow.db $(abspath $(BIN))/ssl-pipeline run
	cp $(LOCK_CLONE)/dvc.lock dvc.lock && rm -rf $(LOCK_CLONE)
	git status --short dvc.lock

clean-outputs:
	rm -rf data/prepared models metrics plots reports checkpoints
