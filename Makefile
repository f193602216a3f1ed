# `make demo`: create .venv, install wnjax, run the main job. `make test`: same set-up, run the
# tests but those marked `slow`, compiled with XLA:CPU's quicker code generation (see
# tests/conftest.py). `make test-all` (what CI runs): every test, those marked `default_codegen`
# under XLA's defaults, the others under the quicker code generation; both passes run, and it
# fails if either did.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all install bench docs lint clean

# pip installs without byte-compiling, which it does on one core; compileall uses every core.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -e ".[test]"
	$(PY) -m compileall -q -j 0 $(VENV)/lib
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/wnjax demo

test: $(STAMP)
	WNJAX_TEST_CODEGEN=quick $(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" tests

test-all: $(STAMP)
	WNJAX_TEST_CODEGEN=quick $(PY) -m pytest -q -n 2 --dist loadfile -m "not default_codegen" tests; \
	quick=$$?; \
	$(PY) -m pytest -q -n 2 --dist loadfile -m default_codegen tests; \
	default=$$?; \
	test $$quick -eq 0 && test $$default -eq 0

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/run_all.py

# `make docs`: install the docs extra into .venv (once), then build the site into site/. The
# build itself needs no network: no web fonts, analytics or remote inventories.
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# `make lint`: ruff's checks and its formatter, both with zero findings.
LINT_STAMP := $(VENV)/.lint-installed

$(LINT_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[lint]"
	touch $(LINT_STAMP)

lint: $(LINT_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
