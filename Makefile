# Every target sets up what it needs: a fresh machine runs `make demo` or `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test lint bench compiled pure clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/siesta demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	bash scripts/system-packages.sh chromium:chromium chromedriver:chromium-driver \
		redis-server:redis-server dockerd:docker.io busybox:busybox-static ip:iproute2 \
		openssl:openssl
	$(BIN)/pytest -q

bench: compiled
	bash bench/setup.sh
	bash scripts/system-packages.sh dockerd:docker.io busybox:busybox-static
	$(BIN)/python bench/run.py
	$(BIN)/python bench/controller.py
	$(BIN)/python bench/savings.py
	$(BIN)/python bench/docker.py
	$(BIN)/python bench/readiness.py

# The hot path compiled with mypyc into build/mypyc/; used while its sources are unchanged
# (see src/siesta/_native.py). `make pure` goes back to Python; so does SIESTA_PURE=1.
compiled: $(STAMP)
	$(BIN)/python scripts/compile.py

pure:
	rm -rf build/mypyc

clean: pure
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
