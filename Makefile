# Quick start:  make run   (set up .venv, run the workflow on the embedded default)
#               make test  (set up .venv, run every test, end-to-end included)
PYTHON ?= python3
VENV := .venv
CORES ?= 2
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup run test test-fast mutation report clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

run: setup
	snakemake --cores $(CORES)

test: setup
	pytest -m "e2e or not e2e"

test-fast: setup
	pytest

# Mutation testing of the core modules against the fast tests (about an hour on 2 cores).
mutation: setup
	$(VENV)/bin/python tests/mutation.py --max-children $(CORES)

report: setup
	snakemake --cores $(CORES) --report results/report.html

clean:
	rm -rf results .snakemake
