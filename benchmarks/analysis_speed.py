"""Speed of the Backward Lens analysis against a bare forward+backward and the naive path.

Measured in one run on the same prompts and model:
- bare:    forward + loss.backward() of each batch (parameter .grad filled), nothing else;
- capture: the analysis core - capture of every MLP gradient's factors, ranks from the
           factors, VJP norms (the rule backward_lens without its logit-lens tables);
- lens:    the logit-lens tables of the same rule (target ranks, neuron updates), reported
           separately: they project every (layer, token) vector onto the whole vocabulary;
- naive:   per prompt, a full backward filling every parameter .grad, then
           torch.linalg.matrix_rank of each full FF gradient.

Usage (from the project root, inside the environment):
    python benchmarks/analysis_speed.py [--model smollm2-135m] [--prompts 100] [--naive-prompts 100]
        [--device cpu] [--prompts-table results/smollm2-135m/prompts.parquet]
Goals (issue 4): capture within 2x of bare; at least 20x faster than naive.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from backlens.analysis.capture import capture_gradient_factors, last_position_loss, pad_batch
from backlens.analysis.gradient_tables import ff2_target_rank_rows, gradient_rank_rows, vjp_norm_rows
from backlens.analysis.spanning_sets import neuron_update_rows
from backlens.data.counterfact import load_counterfact_from_config
from backlens.data.prompt_table import prompt_table, sample_records
from backlens.models.loading import load_model
from backlens.stages.backward_lens import PromptBatchSource

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--naive-prompts", type=int, default=100, help="prompts timed on the naive path")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--prompts-table", default=None, help="reuse a prompts.parquet instead of sampling")
    args = parser.parse_args()

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={args.model}", f"n_prompts={args.prompts}"])
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
    model, adapter, pad_id = loaded.model, loaded.adapter, loaded.tokenizer.pad_token_id
    batches = list(prompts.batches(args.batch_size))
    sync = torch.cuda.synchronize if loaded.device.type == "cuda" else (lambda: None)

    def bare() -> None:
        for _, input_ids, target_ids in batches:
            ids, mask = pad_batch(input_ids, pad_id, loaded.device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            targets = torch.tensor(target_ids, device=loaded.device)
            last_position_loss(logits, [len(i) for i in input_ids], targets).sum().backward()
            model.zero_grad(set_to_none=True)
        sync()

    captured = []

    def capture() -> None:
        captured.clear()
        for case_ids, input_ids, target_ids in batches:
            batch = capture_gradient_factors(model, adapter, input_ids, target_ids, pad_id=pad_id)
            gradient_rank_rows(batch, case_ids)
            vjp_norm_rows(batch, case_ids)
            captured.append((case_ids, batch))
        sync()

    def lens() -> None:
        for case_ids, batch in captured:
            ff2_target_rank_rows(batch, case_ids, adapter)
            neuron_update_rows(batch, case_ids, adapter, top_k=3)
        sync()

    sites = [site for layer in range(adapter.n_layers) for site in adapter.linear_sites(layer)]

    def naive() -> None:
        for input_ids, target_id in list(zip(prompts.input_ids, prompts.target_ids))[: args.naive_prompts]:
            ids, mask = pad_batch([input_ids], pad_id, loaded.device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            targets = torch.tensor([target_id], device=loaded.device)
            last_position_loss(logits, [len(input_ids)], targets).sum().backward()
            for site in sites:
                torch.linalg.matrix_rank(site.weight.grad)
            model.zero_grad(set_to_none=True)
        sync()

    bare()  # warm-up (allocator, kernels)
    seconds = {}
    for name, fn in (("bare", bare), ("capture", capture), ("lens", lens), ("naive", naive)):
        seconds[name] = timed(fn)
        print(f"  timed {name}: {seconds[name]:.2f} s", flush=True)
    seconds["naive"] *= len(prompts.case_ids) / min(args.naive_prompts, len(prompts.case_ids))
    print(f"model {args.model} on {loaded.device}, {len(prompts.case_ids)} prompts, "
          f"{sum(map(len, prompts.input_ids))} tokens, batch size {args.batch_size}, {torch.get_num_threads()} threads")
    for name, value in seconds.items():
        note = " (extrapolated from %d prompts)" % args.naive_prompts if name == "naive" and args.naive_prompts < len(
            prompts.case_ids) else ""
        print(f"  {name:8s} {value:8.2f} s{note}")
    print(f"capture / bare           = {seconds['capture'] / seconds['bare']:.2f}  (goal <= 2)")
    print(f"(capture + lens) / bare  = {(seconds['capture'] + seconds['lens']) / seconds['bare']:.2f}")
    print(f"naive / capture          = {seconds['naive'] / seconds['capture']:.1f}  (goal >= 20)")
    print(f"naive / (capture + lens) = {seconds['naive'] / (seconds['capture'] + seconds['lens']):.1f}")


if __name__ == "__main__":
    main()
