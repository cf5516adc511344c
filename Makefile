PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test test-fast test-slow bench clean kinesalite

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

## Tests and benchmarks add their own packages on top of the runtime ones.
$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
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

## The whole suite (what CI runs).
test: $(DEV_STAMP) kinesalite
	$(PY) -m pytest -q

test-fast: $(DEV_STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(DEV_STAMP) kinesalite
	$(PY) -m pytest -q -m slow

bench: $(DEV_STAMP)
	$(PY) bench/throughput.py --rows 1000000

clean:
	rm -rf $(VENV) data .pytest_cache
