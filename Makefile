# Two entry points, both idempotent: the virtual environment is built once and rebuilt only when pyproject.toml
# changes.   make quick  -> set up, then run the quick replication end to end
#            make test   -> set up, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
CORES  ?= 2
PRESET ?= quick
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.avb-installed

.PHONY: setup quick replicate test dry-run clean-results
setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $@

quick: PRESET = quick
quick: replicate

replicate: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile config/$(PRESET).yaml

dry-run: $(STAMP)
	$(BIN)/snakemake -n --configfile config/$(PRESET).yaml

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)
