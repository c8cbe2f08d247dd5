# fedsim: `make run` (set-up + quickstart) · `make test` (set-up + pytest, without the slow end-to-end checks)
#         `make test-all` (everything) · `make test-kernels` (goldens under every CPU kernel set and 1/2 threads)
#         `make bench` · `make soak` · `make lint`
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-all test-kernels bench soak lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"   # the CPU build; an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install -q -e ".[test,tracking]"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/fedsim run quickstart

test: install
	$(BIN)/python -m pytest -q -m "not slow"

test-all: install
	$(BIN)/python -m pytest -q

test-kernels: install
	bash tests/kernels.sh

bench: install
	$(BIN)/python benchmarks/bench.py

soak: install
	$(BIN)/python benchmarks/soak.py

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache .ruff_cache
