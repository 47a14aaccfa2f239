# One command each: `make run` (the default job) and `make test` (the test suite).
# Both create .venv on first use; torch is the pinned CPU wheel, installed before anything
# that depends on torch so that pip never resolves a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false

.PHONY: install run test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

run: install
	$(OFFLINE) $(PY) launch.py $(ARGS)

test: install
	$(OFFLINE) $(PY) -m pytest -q $(ARGS)

clean:
	rm -rf outputs multirun .cache
