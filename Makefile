# One command each: `make demo` (set up + run the demo), `make test` (set up + run the tests),
# `make lint` (ruff, and mypy --strict on the packages configured in pyproject.toml's [tool.mypy]).
# The set-up creates .venv, installs the CPU build of PyTorch first (TORCH, overridable), then noiseprobe.
PY ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -n 2

.PHONY: setup demo test test-slow browser bench api lint clean
LINT_PATHS := src tests benchmarks examples docs

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/noiseprobe demo --out demo-out

# Headless Chromium renders the HTML report in the report test (Debian's package).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: run 'sudo apt-get install chromium' (needed by tests/core/test_report.py)"; fi; }

# ruff (lint and format) and mypy (strict on the packages in pyproject.toml's [tool.mypy] files)
lint: setup
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

test: setup browser lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: setup browser
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# Both checkers always run; the target fails if either does.

# BackPACK (a comparison in bench_covariance) depends on torchvision, which would pull a CUDA torch:
# install it without its dependencies (it runs without torchvision).
bench: setup
	$(BIN)/python -m pip install -q --no-deps backpack-for-pytorch einops unfoldNd
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/run.py

# The API reference from the docstrings (pdoc) -> build/api/index.html
api: setup
	$(BIN)/python docs/api.py build/api

clean:
	rm -rf $(VENV) demo-out runs .pytest_cache
