# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
VENV ?= .venv
BIN := $(VENV)/bin
REPORT ?= audit-report

.PHONY: setup demo test test-fast lint clean browser-check

$(VENV)/.installed: pyproject.toml constraints.txt scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

setup: $(VENV)/.installed

## Audit the bundled demo model with the smoke suite; writes $(REPORT)/index.html and results.json
demo: setup
	$(BIN)/pytest --audit demo --audit-suite smoke --audit-only --audit-report $(REPORT) -p no:cacheprovider

## The project's own test suite
test: setup
	$(BIN)/pytest -q

## The test suite without the tests marked slow
test-fast: setup
	$(BIN)/pytest -q -m "not slow"

## Open the demo report in headless Chromium: no console errors, no network requests;
## writes a screenshot and an A4 PDF to $(REPORT)/browser-check
browser-check: demo
	bash scripts/browser_setup.sh
	$(BIN)/python scripts/browser_check.py $(REPORT) --out $(REPORT)/browser-check --min-pages 2

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(REPORT) .pytest_cache .ruff_cache build dist
