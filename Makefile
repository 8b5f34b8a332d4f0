# Two entry points, both idempotent: the virtual environment is built once and rebuilt only when pyproject.toml
# changes.   make quick  -> set up, then run the quick replication end to end
#            make test   -> set up, then run the test suite
# Snakemake runs with the workflow profile profiles/$(PROFILE) (default: profiles/default, local; PROFILE=slurm for
# a SLURM cluster); ARGS are passed on to it, e.g. make quick ARGS="--dry-run", make replicate PRESET=cpu ARGS=-n.
PYTHON  ?= python3
VENV    ?= .venv
PRESET  ?= quick
PROFILE ?= default
CORES   ?=
ARGS    ?=
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.avb-installed
SNAKEMAKE = $(BIN)/snakemake --workflow-profile profiles/$(PROFILE) $(if $(CORES),--cores $(CORES))

.PHONY: setup quick replicate test dry-run clean-results
setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

quick: PRESET = quick
quick: replicate

replicate: $(STAMP)
	$(SNAKEMAKE) --configfile config/$(PRESET).yaml $(ARGS)

dry-run: $(STAMP)
	$(SNAKEMAKE) -n --configfile config/$(PRESET).yaml $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)
