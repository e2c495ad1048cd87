# The two set-up commands: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench chromium containers

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

demo: $(VENV)/.runtime
	$(PY) -m demo

# Browser tests drive Debian's Chromium (never a downloaded browser); install it if missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else sudo -n apt-get install -y -qq chromium >/dev/null 2>&1 || echo "chromium is not installed: browser tests will be skipped"; fi; }

# Tests run with production settings (DEBUG off) and throwaway keys; without the connection pool:
# one process runs many threads (live servers, in-process workers) that keep connections past their
# request, and a shared pool of 10 ran dry mid-suite (every checkout waiting 10 s). The pool itself
# is tested in tests/ops/test_pooling.py, in processes of its own.
TEST_ENV := SECRET_KEY=$${SECRET_KEY:-test-only-secret-key-not-for-production-use-0123456789} \
	PSCSYNC_CREDENTIALS_KEYS=$${PSCSYNC_CREDENTIALS_KEYS:-t1:dGVzdC1vbmx5LWNyZWRlbnRpYWxzLWtleS0zMmJ5dGU=} \
	PSCSYNC_SECURE_COOKIES=false PSCSYNC_ALLOW_SANDBOXES=true PSCSYNC_DB_POOL=$${PSCSYNC_DB_POOL:-false}

# Lint first: a style or lint failure fails CI in seconds, before the 10-minute suite.
test: $(VENV)/.dev chromium lint
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

# mypy (mypy.ini: the checked set and the ratchet's remainder) keeps its cache in var/mypy-cache:
# about 35 s from cold, a few seconds after. Its Django plugin loads the settings, hence TEST_ENV.
lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(TEST_ENV) $(VENV)/bin/mypy

# Build the image and run compose.yaml with podman on local stand-in base images, then stop it
# (ops/containers/README.md). Root, apt and several minutes: deliberately not part of `make test`.
containers:
	sh ops/containers/check.sh

bench: $(VENV)/.dev
	$(PY) bench/ingest
