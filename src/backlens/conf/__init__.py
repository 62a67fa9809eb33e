"""The config groups the library itself reads, shipped inside the package (wheel included):
``model/`` (what a model name stands for), ``method/`` (editing hyper-parameters per model) and
``tracing/`` (causal-tracing defaults). An installed backlens finds them here, outside any checkout;
the pipeline composes them with the checkout's ``conf/`` through Hydra's search path
(``conf/config.yaml``: ``hydra.searchpath: [pkg://backlens.conf]``), so each file has one copy.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
GROUPS = ("method", "model", "tracing")

# The model used when none is named (API, console command, benchmarks). conf/config.yaml's defaults
# list names the same config; tests/test_config.py checks the two agree.
DEFAULT_MODEL = "smollm2-135m"
