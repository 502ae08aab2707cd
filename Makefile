# Set-up and checks. `make demo` and `make test` each create .venv when missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint imports format clean

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(VENV)/bin/imgcls predict samples/

test: imports
	$(PY) -m pytest -q

# The layers contract of pyproject.toml: the import graph is the flow (docs/architecture.md).
imports: $(INSTALLED)
	$(VENV)/bin/lint-imports

lint: imports
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

format: $(INSTALLED)
	$(VENV)/bin/ruff format src tests
	$(VENV)/bin/ruff check --fix src tests

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
