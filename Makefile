# s2agri developer tasks. PYTHON picks the interpreter that creates .venv: make install PYTHON=python3.11
PYTHON ?= python3
VENV ?= .venv
VENV_PY := $(VENV)/bin/python
PIP := $(VENV_PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install postgis demo test bench lint typecheck format clean distclean

install: $(STAMP)

# Reinstall only when the package metadata or the pins change.
$(STAMP): setup.py constraints.txt pyproject.toml
	test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -c constraints.txt "setuptools<81" wheel
	$(PIP) install -c constraints.txt -e ".[dev]"
	touch $@

demo: install
	$(VENV)/bin/s2agri demo --out demo-out --overwrite

# PostgreSQL + PostGIS for the PostGIS tests (they skip, saying why, where it cannot be installed).
postgis:
	@bash .ci/install-postgis

test: install postgis
	$(VENV_PY) -m pytest -q tests

bench: install
	@set -e; benches="$(wildcard benchmarks/bench_*.py)"; \
	if [ -z "$$benches" ]; then echo "no benchmarks/bench_*.py"; fi; \
	for bench in $$benches; do echo "== $$bench"; $(VENV_PY) $$bench; done

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(MAKE) typecheck

# mypy (pydantic plugin) on the installed layout: links s2agri/<folder> -> <folder> in .typecheck/
typecheck: install
	rm -rf .typecheck/s2agri && mkdir -p .typecheck/s2agri
	for folder in tasks models workflows aoi; do ln -s ../../$$folder .typecheck/s2agri/$$folder; done
	cd .typecheck && ../$(VENV)/bin/mypy --config-file ../pyproject.toml -p s2agri

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Build outputs and caches; the virtual environment stays (see distclean).
clean:
	rm -rf demo-out build dist .eggs *.egg-info .pytest_cache .ruff_cache .typecheck benchmarks/out benchmarks/scratch bench-out
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
