# quotagate developer commands. Every target installs what it needs into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install serve demo test lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## Run the gateway on the embedded default (bundled policy, mock LLM, memory store, SQLite).
serve: $(STAMP)
	$(VENV)/bin/quotagate serve

## Play the seed scenarios against a throw-away gateway.
demo: $(STAMP)
	$(VENV)/bin/quotagate demo

## The whole test suite (unit, integration, end to end).
test: $(STAMP)
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

## Benchmarks (on demand, not part of the tests): needs `apt-get install wrk hey`.
bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
