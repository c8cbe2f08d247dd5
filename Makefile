# fedsim: `make run` (set-up + quickstart) · `make test` (set-up + pytest, without the slow end-to-end checks)
#         `make test-all` (everything) · `make test-kernels` (goldens under every CPU kernel set and 1/2 threads)
#         `make bench` · `make soak` · `make lint`
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock

.PHONY: install lock run test test-all test-kernels bench soak lint clean

# The versions the suite last ran with ($(LOCK), a pip constraints file); pyproject.toml keeps the ranges a
# library install resolves. `make lock` resolves the ranges afresh in a new venv and rewrites $(LOCK).
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c $(LOCK) "$(TORCH)"   # the CPU build; an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install -q -c $(LOCK) -e ".[test,tracking]"
	touch $(STAMP)

install: $(STAMP)

lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip
	.lock-venv/bin/pip install -q "$(TORCH)" && .lock-venv/bin/pip install -q -e ".[test,tracking]"
	{ echo "# pip constraints: the versions make install / .ci/run install (make lock rewrites this file)"; \
	  .lock-venv/bin/pip freeze --exclude-editable | sed -E 's/^([^=]+==[^+]+)\+.*/\1/'; } > $(LOCK)
	rm -rf .lock-venv

run: install
	$(BIN)/fedsim run quickstart

# one pytest worker per core, one torch thread each (more threads per worker only contend for the same cores)
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow" -n auto

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
	rm -rf $(VENV) .lock-venv runs build *.egg-info .pytest_cache .ruff_cache
