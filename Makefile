# Every target creates .venv on first use, so a fresh clone needs only
# Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/slapoll demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/pytest -q $(TEST_ARGS)

# -P keeps benchmarks/ off sys.path: benchmarks/http.py would shadow the
# standard library's http package.
bench: $(STAMP)
	$(BIN)/python -P benchmarks/dispatch.py
	$(BIN)/python -P benchmarks/control.py
	$(BIN)/python -P benchmarks/http.py

lint: $(STAMP)
	$(BIN)/ruff check slapoll tests benchmarks
	$(BIN)/ruff format --check slapoll tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info
