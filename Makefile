PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_FLAGS := --disable-pip-version-check --no-input --quiet
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test test-fast test-slow lint bench clean kinesalite wheel

## pip into the venv: the pip of $(PYTHON) pointed at it (--python, pip >= 22.3),
## so the venv needs no pip of its own (ensurepip costs ~6 s); else ensurepip.
## --no-compile: modules are compiled when first imported (~6 s saved).
define pip_install
	if $(PYTHON) -m pip --python $(PY) --version >/dev/null 2>&1; then \
		$(PYTHON) -m pip --python $(PY) install $(PIP_FLAGS) --no-compile $(1); \
	else \
		$(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip --default-pip >/dev/null; \
		$(PY) -m pip install $(PIP_FLAGS) --no-compile $(1); \
	fi
endef

## The runtime only (requirements.txt pins it): what `make run` and a
## production install need.
$(STAMP): requirements.txt
	$(PYTHON) -m venv --without-pip $(VENV)
	$(call pip_install,-r requirements.txt)
	touch $(STAMP)

## Tests, lint and benchmarks add their own packages (pip itself among them:
## the package tests build wheels) on top of the runtime ones.
$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(call pip_install,-r requirements-dev.txt)
	touch $(DEV_STAMP)

## The main job on the bundled sample, local mode: no cloud needed.
run: $(STAMP)
	$(PY) run_stream_processing.py

## kinesalite 3.3.3 (Kinesis emulator with resharding) for the scale-out tests;
## without npm the resharding test skips.
KINESALITE := node_modules/.bin/kinesalite

$(KINESALITE): package.json
	@if command -v npm >/dev/null 2>&1; then \
		npm install --no-save --no-audit --no-fund kinesalite@3.3.3 || echo "kinesalite not installed: the resharding test will skip"; \
	else echo "npm not found: the resharding test will skip"; fi

kinesalite: $(KINESALITE)

## The whole suite (what CI runs, after lint), in TEST_WORKERS processes
## (pytest-xdist): most of its time is spent waiting on servers and worker
## processes, so three share two cores well (6:29 here, against 12:24 in one
## process). Tests of one `xdist_group` (the scale-out tests) run one at a
## time, on one worker.
TEST_WORKERS ?= 3
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test: $(DEV_STAMP) kinesalite
	$(PYTEST)

test-fast: $(DEV_STAMP)
	$(PYTEST) -m "not slow"

test-slow: $(DEV_STAMP) kinesalite
	$(PYTEST) -m slow

## ruff, configured in pyproject.toml.
lint: $(DEV_STAMP)
	$(PY) -m ruff check .

## A wheel of the package in dist/ (`pip install -c requirements.txt dist/rivulet-*.whl`).
wheel: $(DEV_STAMP)
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir dist .

bench: $(DEV_STAMP)
	$(PY) bench/throughput.py --rows 1000000

clean:
	rm -rf $(VENV) data .pytest_cache build dist *.egg-info
