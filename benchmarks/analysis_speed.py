"""Speed of the Backward Lens analysis against a bare forward+backward and the naive path.

Measured in one run on the same prompts and model:
- bare:    forward + loss.backward() of each batch (parameter .grad filled), nothing else;
- capture: capture of every MLP gradient's factors (and the sub-module VJPs), as the rule
           ``backward_lens`` does it;
- tables:  the rule's five tables from those captures (gradient_ranks, vjp_norms, target_ranks,
           neuron_updates, vjp_similarity), capture excluded: ``stages.backward_lens.build_tables``,
           the function the rule calls, with its own per-step timer (``<table>_s`` in the JSON);
- naive:   per prompt, a full backward filling every parameter .grad, then
           torch.linalg.matrix_rank of each full FF gradient (timed on --naive-prompts prompts and
           extrapolated to all).

Usage (from the project root, inside the environment):
    python benchmarks/analysis_speed.py [--model smollm2-135m] [--prompts 100] [--naive-prompts 3]
        [--device cpu] [--prompts-table results/smollm2-135m/prompts.parquet] [--out F.json] [--smoke]
Goals: capture + tables within 3x bare (issue 22); capture within 2x bare and >= 20x faster than
naive (issue 4).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from backlens.analysis.capture import last_position_loss, pad_batch
from backlens.analysis.logit_lens import lens_is_odd
from backlens.api.sampled_prompts import PromptBatchSource
from backlens.bench import goal, write_result
from backlens.conf import DEFAULT_MODEL
from backlens.data.counterfact import load_counterfact_from_config
from backlens.data.prompt_table import prompt_table, sample_records
from backlens.models.loading import load_model
from backlens.stages.backward_lens import build_tables

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SMOKE = {"model": "tiny-gpt2", "prompts": 6, "naive_prompts": 2, "batch_size": 3}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--naive-prompts", type=int, default=3,
                        help="prompts timed on the naive path (~8 s each for SmolLM2 on 2 cores), extrapolated")
    parser.add_argument("--batch-size", type=int, default=None, help="default: analysis.batch_size")
    parser.add_argument("--prompts-table", default=None, help="reuse a prompts.parquet instead of sampling")
    parser.add_argument("--out", default=None, help="write the benchmark JSON here")
    parser.add_argument("--smoke", action="store_true", help=f"tiny random model, few prompts: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.prompts, args.naive_prompts = SMOKE["model"], SMOKE["prompts"], SMOKE["naive_prompts"]
        args.batch_size = SMOKE["batch_size"]

    overrides = [f"model={args.model}", f"n_prompts={args.prompts}"]
    if args.batch_size is not None:
        overrides.append(f"analysis.batch_size={args.batch_size}")
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    started = time.perf_counter()
    loaded = load_model(cfg.model, device=args.device, dtype="float32")
    print(f"loaded {args.model} in {time.perf_counter() - started:.1f} s", flush=True)
    if args.prompts_table:
        import pandas as pd

        table = pd.read_parquet(args.prompts_table)
    else:
        records = sample_records(load_counterfact_from_config(cfg.dataset).records, args.prompts, int(cfg.seed))
        table = prompt_table(records, loaded.tokenizer)
    prompts = PromptBatchSource.from_table(table)
    model, pad_id = loaded.model, loaded.tokenizer.pad_token_id
    batch_size = int(cfg.analysis.batch_size)
    batches = [prompts.sliced(start, start + batch_size) for start in range(0, len(prompts.case_ids), batch_size)]
    sync = torch.cuda.synchronize if loaded.device.type == "cuda" else (lambda: None)

    def bare() -> None:
        for batch in batches:
            ids, mask = pad_batch(batch.input_ids, pad_id, loaded.device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            targets = torch.tensor(batch.target_ids, device=loaded.device)
            last_position_loss(logits, [len(i) for i in batch.input_ids], targets).sum().backward()
            model.zero_grad(set_to_none=True)
        sync()

    step_seconds: dict[str, float] = {}

    def rule() -> None:
        result = build_tables(loaded, prompts, cfg.analysis, progress=False)
        sync()
        step_seconds.update(result.seconds)

    sites = [site for layer in range(loaded.adapter.n_layers) for site in loaded.adapter.linear_sites(layer)]
    n_naive = min(args.naive_prompts, len(prompts.case_ids))

    def naive() -> None:
        for input_ids, target_id in list(zip(prompts.input_ids, prompts.target_ids))[:n_naive]:
            ids, mask = pad_batch([input_ids], pad_id, loaded.device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            targets = torch.tensor([target_id], device=loaded.device)
            last_position_loss(logits, [len(input_ids)], targets).sum().backward()
            for site in sites:
                torch.linalg.matrix_rank(site.weight.grad)
            model.zero_grad(set_to_none=True)
        sync()

    bare()  # warm-up (allocator, kernels)
    bare_s = timed(bare)
    print(f"  timed bare: {bare_s:.2f} s", flush=True)
    rule_s = timed(rule)
    capture_s = step_seconds["capture"]
    table_seconds = {name: value for name, value in step_seconds.items() if name not in ("capture", "total")}
    tables_s = sum(table_seconds.values())
    print(f"  timed rule backward_lens: {rule_s:.2f} s (capture {capture_s:.2f} s, tables {tables_s:.2f} s: "
          + ", ".join(f"{k} {v:.2f}" for k, v in table_seconds.items()) + ")", flush=True)
    # The floor under the tables: their vocabulary projections alone (one matmul per chunk of the same
    # shape as theirs, no ranks, no top-k), on as many vectors as they project: every (layer, token) FF2
    # VJP once, and the top-k neurons' updates of every (prompt, layer, matrix), twice where the lens
    # is not odd (a biased final norm or unembedding: the signed update needs its own pass).
    n_matrices = len(loaded.adapter.linear_sites(0))
    n_updates = len(prompts.case_ids) * loaded.adapter.n_layers * n_matrices * int(cfg.analysis.top_k_neurons)
    n_projected = sum(map(len, prompts.input_ids)) * loaded.adapter.n_layers + n_updates * (1 if lens_is_odd(loaded.adapter) else 2)
    unembedding = loaded.adapter.unembedding

    @torch.no_grad()
    def projection() -> None:
        chunk = torch.randn(2048, unembedding.shape[1], device=loaded.device, dtype=unembedding.dtype)
        for start in range(0, n_projected, 2048):
            chunk[: min(2048, n_projected - start)] @ unembedding.T
        sync()

    projection_s = timed(projection)
    print(f"  timed projection floor ({n_projected} vectors onto {unembedding.shape[0]} tokens): {projection_s:.2f} s", flush=True)
    naive_timed_s = timed(naive)
    naive_s = naive_timed_s * len(prompts.case_ids) / n_naive
    print(f"  timed naive on {n_naive} prompts: {naive_timed_s:.2f} s -> {naive_s:.2f} s for all", flush=True)

    ratios = {
        "capture / bare": capture_s / bare_s,
        "tables / bare": tables_s / bare_s,
        "projection floor / bare": projection_s / bare_s,
        "tables / projection floor": tables_s / projection_s,
        "(capture + tables) / bare": (capture_s + tables_s) / bare_s,
        "naive / capture": naive_s / capture_s,
        "naive / (capture + tables)": naive_s / (capture_s + tables_s),
    }
    goals = [
        goal("(capture + tables) / bare", ratios["(capture + tables) / bare"], 3.0),
        goal("capture / bare", ratios["capture / bare"], 2.0),
        goal("naive / capture", ratios["naive / capture"], 20.0, at_most=False),
    ]
    settings = {"prompts": len(prompts.case_ids), "tokens": sum(map(len, prompts.input_ids)), "batch_size": batch_size,
                "naive_prompts_timed": n_naive, "threads": torch.get_num_threads(), "dtype": "float32",
                "top_k_neurons": int(cfg.analysis.top_k_neurons), "normalized": bool(cfg.analysis.normalized),
                "projected_vectors": n_projected}
    print(f"model {args.model} on {loaded.device}: {settings}")
    for name, value in ratios.items():
        print(f"  {name:28s} = {value:.2f}")
    write_result(args.out, "analysis_speed", model=args.model, device=str(loaded.device), smoke=args.smoke,
                 settings=settings, timings={"bare": bare_s, "capture": capture_s, "tables": tables_s,
                                             **table_seconds, "projection_floor": projection_s, "naive": naive_s, "naive_timed": naive_timed_s},
                 ratios=ratios, goals=goals)


if __name__ == "__main__":
    main()
