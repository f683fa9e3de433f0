# Two commands: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Corpora are fetched once into $BPTT_DATA_DIR; with none set, use a checked-out data folder
# beside the repository when there is one (CI has the book's corpus in ../shared/data).
ifeq ($(BPTT_DATA_DIR),)
ifneq ($(wildcard ../shared/data/timemachine.txt),)
export BPTT_DATA_DIR := $(abspath ../shared/data)
endif
endif

.PHONY: demo test lint check bench clean

$(STAMP): pyproject.toml setup.py constraints.txt $(wildcard src/bptt/engine/csrc/*)
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bptt demo --overwrite

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

check: $(STAMP)
	$(BIN)/bptt check

bench: $(STAMP)
	$(BIN)/bptt bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
