# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# torch==2.13.0 is installed first (the CPU build on local disk); anything unpinned pulls a
# multi-GB CUDA build. fbgemm-gpu-cpu 1.8.0 and triton 3.7.1 are the builds that match it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.compemb-installed
PYTEST_ARGS ?=

.PHONY: setup test test-slow demo bench clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[fbgemm,triton,plots,postgres,dev]'
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

demo: setup
	$(PY) -m compemb.cli demo

bench: setup
	$(PY) benchmarks/bench_encode.py
	$(PY) benchmarks/bench_embedding.py

clean-venv:
	rm -rf $(VENV)
