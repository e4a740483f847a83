# Two commands on a fresh clone: `make bench` (the main job, on the CPU) and `make test` (the whole suite);
# `make test-fast` is the quick subset for the inner loop.
# Each creates .venv and installs the project into it first.
PYTHON ?= python3
# Extra maedet-bench flags for `make bench`, e.g. BENCH_ARGS="--threads 1 --max-time 600" on a busy machine.
BENCH_ARGS ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install bench test test-fast lint lint-imports format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch/torchvision pinned to the releases this project is tested with (installed from local files where present).
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e '.[dev,distributed]'
	touch $(STAMP)

install: $(STAMP)

bench: $(STAMP)
	$(BIN)/maedet-bench --plot runs/bench/bench.png --json runs/bench/bench.json --csv runs/bench/bench.csv $(BENCH_ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	# import-linter's lint-imports over the installed layout: the layers of docs/design.md hold (see the script).
	$(BIN)/python scripts/lint_imports.py
	$(BIN)/python -m pytest

# The inner loop: every test not marked slow (pytest markers; under 3 minutes on a 2-core CPU).
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python scripts/lint_imports.py
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

lint-imports: $(STAMP)
	$(BIN)/python scripts/lint_imports.py

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
