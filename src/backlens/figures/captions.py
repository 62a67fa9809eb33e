"""Captions of every figure and table the workflow draws (the HTML report shows them)."""

from __future__ import annotations

from backlens.figures.registry import ALL_FIGURES

OTHER_CAPTIONS = {
    "tracing_examples": "ROME causal tracing of single facts: P(answer) after restoring the clean hidden state "
    "(residual), MLP output or attention output at one token and layer of the corrupted run (subject embeddings "
    "plus Gaussian noise).",
    "tracing_avg": "Average indirect effect (P after restoring minus P corrupted) per ROME segment and layer, "
    "over the traced facts the model answers correctly; one heatmap per restored kind.",
    "tracing_avg_lines": "Average indirect effect per layer for each segment, with 95% bands over facts.",
    "tracing_severed": "At the last subject token: restoring the residual stream with and without the later "
    "MLP (attention) outputs kept corrupted (ROME's severed paths).",
    "fig26": "Fig 26: forward pass shift variants (the paper's e_t; centred e_t; centred e_t with a whitened key), "
    "efficacy and paraphrase accuracy and NS over layer x eta, on CounterFact cases outside the evaluation range; "
    "the chosen setting of each is boxed.",
    "table1": "Table 1: single-edit CounterFact accuracies (efficacy, paraphrase, neighborhood, %), generation "
    "n-gram entropy and ROME's probability metrics per method, mean +- std over cases; the paper's numbers "
    "beside ours when the model is GPT-2 XL.",
    "table7": "Table 7: perplexity of the edited model on held-out text, on a fixed subset of edits.",
    "compare_fig3": "Fig 3 across runs (paper Figs 19-21): % of prompts whose gradient rank equals the prompt "
    "length P, by layer index / number of layers, one panel per FF matrix and one line per run.",
    "compare_fig6": "Fig 6 across runs (paper Fig 18): median rank of target_new in the logit lens of the last "
    "token's FF2 VJP, as a fraction of V-1 (band: interquartile range over prompts), by layer index / number of "
    "layers, one line per run.",
    "compare_editing": "One editing method's efficacy, paraphrase and neighborhood accuracy in each run of a sweep.",
}


def caption_for(name: str) -> str:
    """The caption of figure or table ``name`` (a registry figure, a tracing or editing output,
    or compare_<kind>)."""
    if name in ALL_FIGURES:
        return ALL_FIGURES[name].caption
    if name.startswith("compare_editing_"):
        return OTHER_CAPTIONS["compare_editing"]
    if name not in OTHER_CAPTIONS:
        raise KeyError(f"no caption for {name!r}; add one to backlens.figures.captions")
    return OTHER_CAPTIONS[name]
