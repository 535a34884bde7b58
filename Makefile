# Every target sets up what it needs: a fresh machine runs `make demo` or `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/siesta demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	bash scripts/system-packages.sh chromium:chromium chromedriver:chromium-driver
	$(BIN)/pytest -q

bench: $(STAMP)
	bash bench/setup.sh
	$(BIN)/python bench/run.py
	$(BIN)/python bench/controller.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
