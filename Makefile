# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# torch==2.13.0 is installed first (the CPU build on local disk); anything unpinned pulls a
# multi-GB CUDA build. fbgemm-gpu-cpu 1.8.0 and triton 3.7.1 are the builds that match it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.compemb-installed
PYTEST_ARGS ?=

.PHONY: setup test test-slow lint demo bench clean-venv

# torchrec 1.8.0 (the build for torch 2.13) is installed without its dependencies: its `fbgemm-gpu`
# requirement would pull the CUDA build over fbgemm-gpu-cpu (which provides the same module); the
# `distributed` extra holds the rest. `pip check` then names fbgemm-gpu as missing: harmless, never run it.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[fbgemm,triton,plots,postgres,dev,distributed]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps torchrec==1.8.0
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

demo: setup
	$(PY) -m compemb.cli demo

# `make bench` runs the CPU benchmarks (a few minutes on 2 cores) and ends with one summary table
# of ratios (compressed / full, compemb / DLRM-style, one-hot and 20-hot) from bench_embedding.
# Any script of benchmarks/ runs the same way, e.g. `make bench BENCH=bench_fbgemm_cpu BENCH_ARGS="--batch 512"`.
BENCH ?= bench_encode bench_split bench_embedding
BENCH_ARGS ?=

bench: setup
	@for b in $(BENCH); do echo "== benchmarks/$${b%.py}.py"; $(PY) benchmarks/$${b%.py}.py $(BENCH_ARGS) || exit 1; done

clean-venv:
	rm -rf $(VENV)
