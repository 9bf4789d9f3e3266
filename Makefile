# moetrace: `make demo` and `make test` work from a fresh clone with no GPU and no download but PyPI.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH   = torch==2.13.0
STAMP   = $(VENV)/.installed

.PHONY: install test test-all demo lint format bench clean

install: $(STAMP)

# torch is pinned and installed first: an unpinned torch pulls several GB of CUDA packages.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,ray]"
	touch $(STAMP)

# The CPU suite; pytest exits 5 when it collects no test, and make fails on any non-zero exit.
test: install
	$(BIN)/python -m pytest -m "not slow and not gpu" -q

test-all: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/moetrace demo

lint: install
	$(BIN)/ruff check moetrace tests bench
	$(BIN)/ruff format --check moetrace tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format moetrace tests bench
	$(BIN)/ruff check --fix moetrace tests bench

bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .grimp_cache build *.egg-info
