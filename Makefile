# One command each: `make run` (the default job), `make test` (the test suite), `make data`
# (MGSM, GSM8K and text samples into data/), `make results` (regenerate the docs' tables).
# Each creates .venv on first use; torch is the pinned CPU wheel, installed before anything
# that depends on torch so that pip never resolves a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
# Data from an explicit folder (DATA_FROM=...), else ../shared/data when present, else the hub.
FETCH := $(PY) -m maet.corpora.fetch_data $(if $(DATA_FROM),--from $(DATA_FROM))

.PHONY: install data run test test-distributed mutation gpu-check results clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Needs a source: DATA_FROM, ../shared/data, or network for the hub.
data: install
	$(FETCH)

# run and test take data from a local source when there is one, and go on without it.
run: install
	@$(OFFLINE) $(FETCH) --optional --local-only
	$(OFFLINE) $(PY) launch.py $(ARGS)

test: install
	@$(OFFLINE) $(FETCH) --optional --local-only
	$(OFFLINE) $(PY) -m pytest -q -rs $(ARGS)

# One reduced world job on 2 CPU processes (torchrun, gloo, one thread each) against the same job
# on one process: the deltas must match within tests/test_distributed.py's TOLERANCE (~2 min).
test-distributed: install
	$(OFFLINE) OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -rs -m distributed tests/test_distributed.py $(ARGS)

# Mutation testing of the core by the fast suite (docs/mutation.md): mutmut over the modules in
# pyproject's [tool.mutmut], JOBS mutants at a time (ONLY='maet.method.merging*' for one module), then the
# score and every survivor not recorded as equivalent; fails below 90% killed.
JOBS ?= 2
mutation: install
	$(PY) -m pip install -q -e '.[test,mutation]'
	@$(OFFLINE) $(FETCH) --optional --local-only
	$(OFFLINE) OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children $(JOBS) $(ONLY)
	$(PY) tests/mutation_report.py

# The world job on one GPU in fp32 and bf16, compared (a few minutes); fails at once without a GPU.
gpu-check: install
	$(OFFLINE) $(PY) -m benchmarks.gpu_check $(ARGS)

# Re-runs what README.md, sweeps/README.md and benchmarks/README.md show and rewrites those tables
# in place (ONLY=name,name for some; LIST=1 to list them).
results: install
	$(OFFLINE) $(PY) -m maet.reporting.results $(if $(ONLY),--only $(ONLY)) $(if $(LIST),--list)

clean:
	rm -rf outputs multirun .cache
