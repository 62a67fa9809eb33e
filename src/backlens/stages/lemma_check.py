"""Rule ``lemma_check``: Lemma 4.1 against autograd, and factor ranks against full-matrix SVDs.

For every sampled prompt (or the first ``analysis.lemma.n_prompts``), one forward and backward
pass of that prompt alone goes both into the hooked MLP modules (their inputs x_i and output
VJPs delta_i) and into every MLP weight: autograd's dL/dW is the reference, compared with
sum_i delta_i x_i^T built from captured factors: ``relative_error`` uses the factors of that
same single-prompt pass (the Lemma itself: autograd forms the same sum, so 0 means
bit-identical; a wrong factor or position shows as an error of order 1, see the tests),
``relative_error_batched`` the factors captured in padded batches, exactly as the
``backward_lens`` rule uses them (float32 round-off of the batched forward pass adds to it).
On the first ``n_crosscheck`` prompts the rank from the factors is also compared with
``torch.linalg.matrix_rank`` of the full gradient: in float64 with the same tolerance (must
agree) and in float32 with matrix_rank's default tolerance (the pitfall).

Cost, measured on SmolLM2-135M (30 layers x 3 matrices, 100 prompts of 4-15 tokens), one torch
thread on a 2-core CPU that other jobs kept at load average 3-3.7: 0.43 s per prompt, against
0.76 s when the factors and the reference came from two passes of the prompt (old and new run
interleaved on the same 11 prompts; 1.18 against 2.03 s at load 5-6). The crosscheck adds ~16 s
per prompt (2 x 90 matrix_rank calls on 576 x 1536 matrices; ~36 s at load 5-6), so the Lemma
itself runs on every prompt and the crosscheck on ``n_crosscheck`` (2) of them; the whole stage
took 136 s (model load ~25 s, batched capture ~23 s, crosscheck ~32 s) against 197 s before
(back to back; 349 s before at load 4-6, close to the 348 s that opened the issue).
Bound on large models: every checked prompt materialises every MLP weight gradient (twice) and the
crosscheck runs two SVDs per full matrix, which on GPT-2 XL (96 matrices of 6400 x 1600) did not finish
in 60 s on an H200. ``analysis.lemma.max_elements`` caps the weight-gradient elements checked in all
(prompts x MLP weight elements; the first prompts that fit), and ``analysis.lemma.crosscheck_max_work``
the SVDs' work (elements x min(d_out, d_in) per matrix; evenly spread layers of the crosschecked prompts).
Both defaults keep SmolLM2-135M's full check (100 prompts, every layer of 2 crosschecked prompts); the
lemma_check table's ``n_sampled`` column and the analysis report state the sample.
A full-size difference per matrix is kept rather than a randomized sketch (G R against F R for a
Gaussian d_in x k R): autograd's G is materialised by the backward pass either way, and reading
it for G R cost as much as the exact difference (0.17 against 0.14 s for 90 matrices, k = 8),
which keeps the exact-zero reading.
"""

from __future__ import annotations

import logging
import pandas as pd
from omegaconf import DictConfig

from backlens.analysis.lemma import lemma_rows
from backlens.api.sampled_prompts import capture_batches, read_prompts
from backlens.io import write_table
from backlens.models.loading import load_model
from backlens.models.sites import LinearSite

log = logging.getLogger(__name__)


def checked_prompts(n_prompts: int | None, n_sampled: int, elements_per_prompt: int = 0,
                    max_elements: float | None = None) -> int:
    """How many of the sampled prompts (the first, in sample order) are checked: all for null, at most
    ``max_elements`` weight-gradient elements in all (at least one prompt)."""
    if n_prompts is not None and int(n_prompts) < 1:
        raise ValueError(f"analysis.lemma.n_prompts={n_prompts}: give a positive number, or null for every prompt")
    n = n_sampled if n_prompts is None else min(int(n_prompts), n_sampled)
    if max_elements is not None and elements_per_prompt:
        n = min(n, max(1, int(float(max_elements) // elements_per_prompt)))
    return n


def crosscheck_layers(sites: list[LinearSite], n_layers: int, n_prompts: int, max_work: float | None) -> list[int]:
    """Layers whose full gradients are SVD'd on each crosschecked prompt: all, or evenly spread ones whose
    SVD work (elements x min(d_out, d_in), per matrix) fits ``max_work`` over ``n_prompts`` prompts."""
    if n_prompts == 0 or not sites:
        return []
    work = sum(s.out_features * s.in_features * min(s.out_features, s.in_features) for s in sites) / n_layers
    fitting = n_layers if max_work is None else int(float(max_work) // (work * n_prompts))
    if fitting >= n_layers:
        return list(range(n_layers))
    return sorted({round(i * (n_layers - 1) / max(fitting - 1, 1)) for i in range(max(fitting, 1))})


def run(cfg: DictConfig) -> None:
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    prompts = read_prompts(cfg.paths.prompts, cfg.model.name)
    lemma = cfg.analysis.lemma
    adapter = loaded.adapter
    sites = [site for layer in range(adapter.n_layers) for site in adapter.linear_sites(layer)]
    n_checked = checked_prompts(lemma.get("n_prompts"), len(prompts.case_ids),
                                sum(s.out_features * s.in_features for s in sites), lemma.get("max_elements"))
    n_crosscheck = min(int(lemma.n_crosscheck), n_checked)
    cross_layers = crosscheck_layers(sites, adapter.n_layers, n_crosscheck, lemma.get("crosscheck_max_work"))
    log.info("Lemma check on %d of %d sampled prompts; crosscheck on %d prompts x %d of %d layers", n_checked,
             len(prompts.case_ids), n_crosscheck, len(cross_layers), adapter.n_layers)
    rows: list[dict] = []
    index = 0  # position in sample order, which the batches follow
    # Batches over all prompts, as backward_lens pads them; the loop stops after the last checked one.
    for case_ids, batch in capture_batches(loaded, prompts, int(cfg.analysis.batch_size), submodules=False):
        for prompt, case_id in enumerate(case_ids):
            if index == n_checked:
                break
            rows.extend(lemma_rows(loaded, batch, prompt, case_id, prompts.input_ids[index],
                                   prompts.target_ids[index], crosscheck=cross_layers if index < n_crosscheck else False))
            index += 1
        if index == n_checked:
            break
    table = pd.DataFrame(rows)
    table.insert(0, "model", cfg.model.name)
    table.insert(1, "dtype", str(loaded.dtype).removeprefix("torch."))
    table["n_sampled"] = len(prompts.case_ids)  # the check may cover a sample of them (analysis.lemma)
    for column in ("rank_full_float64", "rank_full_float32_default_tol"):
        table[column] = table[column].astype("Int64")
    write_table(table, cfg.paths.lemma_check)
    log.info("max relative error %.3g (batched capture: %.3g) over %d gradients",
             table.relative_error.max(), table.relative_error_batched.max(), len(table))
