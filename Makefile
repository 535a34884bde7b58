# Every target sets up what it needs: a fresh machine runs `make demo` or `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
RUNTIME := $(VENV)/.runtime
STAMP   := $(VENV)/.installed
PORT    ?= 8080

.PHONY: demo test lint bench compiled pure clean dist fuzz

# What siesta needs to run (make demo): the package and its runtime dependencies only.
# The hot path is compiled too (as a wheel's build hook does), or left pure with a warning
# when it cannot be (no C compiler): siesta runs either way.
$(RUNTIME): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e . mypy setuptools
	$(BIN)/python scripts/compile.py || echo "make: the hot path stays pure Python"
	touch $(RUNTIME)

# What the checks and tests need besides: the dev extra.
$(STAMP): $(RUNTIME)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(RUNTIME)
	$(BIN)/siesta demo --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	bash scripts/system-packages.sh chromium:chromium chromedriver:chromium-driver \
		redis-server:redis-server dockerd:docker.io busybox:busybox-static ip:iproute2 \
		openssl:openssl node:nodejs npm:npm
	cd tests/oidc && npm ci --no-audit --no-fund  # the OIDC tests' provider (node-oidc-provider)
	$(BIN)/python scripts/compile.py
	$(BIN)/pytest -q $(PARALLEL)
	SIESTA_PURE=1 $(BIN)/pytest -q $(PARALLEL) $(GATEWAY_TESTS)
	$(MAKE) dist

# Two pytest-xdist workers; tests sharing a costly fixture (dockerd, a module's servers)
# stay on one (tests/conftest.py). PARALLEL= runs the suite in one process.
PARALLEL ?= -n 2 --dist loadgroup

# The whole suite runs on the compiled hot path; these again on the pure one.
GATEWAY_TESTS := tests/test_gateway_http.py tests/test_http_heads.py tests/test_wake.py \
	tests/test_strict_http.py tests/test_fuzz_gateway.py tests/test_smuggling_corpus.py

# The gateway fuzzer's long run: thousands of Hypothesis rounds (random seeds) against the
# compiled hot path, then the smuggling corpus. FUZZ_EXAMPLES=N for another count.
FUZZ_EXAMPLES ?= 5000
fuzz: compiled
	SIESTA_FUZZ=long SIESTA_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q -p no:cacheprovider \
		--hypothesis-show-statistics -o timeout=0 tests/test_fuzz_gateway.py
	$(BIN)/pytest -q tests/test_smuggling_corpus.py

# The sdist and the wheel (its build hook compiles the hot path) into dist/, then the
# wheel installed with pipx into a temporary place (tests/test_packaging.py).
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	SIESTA_WHEEL="$$(ls dist/*.whl)" $(BIN)/pytest -q tests/test_packaging.py

bench: compiled
	bash bench/setup.sh
	bash scripts/system-packages.sh dockerd:docker.io busybox:busybox-static \
		redis-server:redis-server
	$(BIN)/python bench/run.py
	$(BIN)/python bench/controller.py
	$(BIN)/python bench/savings.py
	$(BIN)/python bench/docker.py
	$(BIN)/python bench/readiness.py
	$(BIN)/python bench/replicas.py

# The hot path compiled with mypyc into build/mypyc/; used while its sources are unchanged
# (see src/siesta/_native.py). `make pure` goes back to Python; so does SIESTA_PURE=1.
compiled: $(STAMP)
	$(BIN)/python scripts/compile.py

pure:
	rm -rf build/mypyc

clean: pure
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
