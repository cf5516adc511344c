PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check --no-input --quiet
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test test-fast test-slow lint bench clean kinesalite wheel

## The runtime only (requirements.txt pins it): what `make run` and a
## production install need. No pip self-upgrade: the venv's pip installs wheels.
$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.txt
	touch $(STAMP)

## Tests, lint and benchmarks add their own packages on top of the runtime ones.
$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PIP) install -r requirements-dev.txt
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

## The whole suite (what CI runs, after lint).
test: $(DEV_STAMP) kinesalite
	$(PY) -m pytest -q

test-fast: $(DEV_STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(DEV_STAMP) kinesalite
	$(PY) -m pytest -q -m slow

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
