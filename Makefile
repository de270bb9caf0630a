# make run: set up, then one poll on the demo config.  make test: set up everything, run it all.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test setup system-deps-run system-deps-test lint typecheck unit bench clean dist

run: system-deps-run $(VENV)/.stamp
	$(BIN)/telegraf-balloon --once --config examples/demo.toml

test: system-deps-test $(VENV)/.stamp lint typecheck
	$(BIN)/pytest -q

setup: $(VENV)/.stamp

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[libvirt,vsphere,test]'
	touch $@

system-deps-run:
	@scripts/install-system-deps.sh run

system-deps-test:
	@scripts/install-system-deps.sh test

lint: $(VENV)/.stamp
	$(BIN)/ruff check telegraf_balloon tests bench scripts
	$(BIN)/ruff format --check telegraf_balloon tests bench scripts

typecheck: $(VENV)/.stamp
	$(BIN)/mypy telegraf_balloon tests bench scripts

# Selected by marker: a test that starts a real component carries `integration`, wherever it is.
unit: $(VENV)/.stamp
	$(BIN)/pytest -q -m "not integration"

bench: $(VENV)/.stamp
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# sdist and wheel in dist/, built with the venv's setuptools (no download), checked by twine.
dist: $(VENV)/.stamp
	rm -rf dist build
	$(BIN)/python -m build --no-isolation --outdir dist .
	$(BIN)/twine check --strict dist/*

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache dist build
