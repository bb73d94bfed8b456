# Quick start:  make run   (set up .venv, run the workflow on the embedded default)
#               make test  (set up .venv, run every test, end-to-end included)
PYTHON ?= python3
VENV := .venv
CORES ?= 2
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup run lint test test-fast test-other-bits mutation report slurm-profile clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

run: setup
	snakemake --cores $(CORES)

# Lint first (seconds): ruff with ruff.toml's rules, and Snakemake's own lint of the rules.
lint: setup
	ruff check workflow tests
	snakemake --lint

test: setup lint
	pytest -m "e2e or not e2e"

test-fast: setup
	pytest

# The unit and end-to-end tests once more on other floating-point last bits (CI runs it after
# `test`): torch's non-vectorised kernels, oneDNN's SSE4.1 kernels and 2 torch threads in the
# tests' own processes. Tests that hold only on one machine fail here; tests/README.md. The
# Fashion-MNIST run (real_data) compares no bits, only accuracies well above chance: left out.
OTHER_BITS := ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 VITLANDSCAPE_TEST_THREADS=2
test-other-bits: setup
	$(OTHER_BITS) pytest -m "not slurm and not real_data"

# Mutation testing of the core modules against the fast tests (about an hour on 2 cores).
mutation: setup
	$(VENV)/bin/python tests/mutation.py --max-children $(CORES)

report: setup
	snakemake --cores $(CORES) --report results/report.html

# Install profiles/slurm as the user profile `slurm` (a copy; rerun after pulling profile changes),
# so that `snakemake --profile slurm` works as typed. Snakemake looks for profiles in the working
# directory, $$XDG_CONFIG_HOME/snakemake (default ~/.config/snakemake) and /etc/xdg/snakemake.
PROFILE_DIR ?= $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/snakemake/slurm
slurm-profile:
	mkdir -p $(PROFILE_DIR)
	cp profiles/slurm/profile.yaml $(PROFILE_DIR)/profile.yaml
	@echo "wrote $(PROFILE_DIR)/profile.yaml (from profiles/slurm); now: snakemake --profile slurm"

clean:
	rm -rf results .snakemake
