"""Causal tracing cost: reuse of corrupted states vs full recomputation, on a configured model.

Prints, per fact and in total, the token-layers (block evaluations x positions, a FLOP
proxy) that the reusing restoration computes and that one full forward per restored run
would compute, the wall time of both on the same fact(s), and facts per second.

    python benchmarks/tracing_speed.py                      # SmolLM2-135M, 3 facts, 1 reference fact
    python benchmarks/tracing_speed.py --facts 5 --reference-facts 0 --threads 2
    python benchmarks/tracing_speed.py --smoke --out F.json  # tiny random GPT-2 (the test suite's run)

The JSON (--out) holds ``traced_s`` (all facts, reusing states), ``reference_reuse_s`` and
``reference_full_s`` (the reference facts by both paths, side by side), the ratios, and the goal
that reuse is faster than full recomputation on the same facts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from backlens.bench import goal, write_result
from backlens.conf import DEFAULT_MODEL
from backlens.data.known_facts import load_known_facts_from_config
from backlens.models.loading import load_model
from backlens.stages.causal_tracing import trace_settings
from backlens.tracing.facts import prepare_fact, screen_facts
from backlens.tracing.reference import reference_restored_prob
from backlens.tracing.runs import corrupted_embeddings, fact_generator, noise_std, recorded_run
from backlens.tracing.trace import model_flops, trace_fact

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# A random model answers no fact: the smoke run traces the first facts whatever the model predicts.
SMOKE = {"model": "tiny-gpt2", "facts": 1, "reference_facts": 1, "overrides": ["tracing.noise_samples=2"]}


def _config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _full_recomputation_seconds(loaded, prompt, trace, settings, seed: int) -> float:
    """Wall time of one full forward (all noise samples batched) per traced cell of the fact."""
    adapter, segmented = loaded.adapter, prompt.segmented
    started = time.perf_counter()
    ids = torch.tensor([segmented.input_ids], device=loaded.device)
    clean_embeddings = adapter.token_embeddings(ids)
    clean = recorded_run(adapter, clean_embeddings, prompt.answer_id)
    noisy = corrupted_embeddings(
        clean_embeddings, segmented.subject_start, segmented.subject_end, settings.noise_samples,
        settings.noise_std, fact_generator(seed, prompt.fact.known_id),
    )
    corrupted = recorded_run(adapter, noisy, prompt.answer_id)
    for k, kind in enumerate(trace.kinds):
        for token in range(len(segmented)):
            if torch.isnan(torch.as_tensor(trace.restored[k, token])).all():
                continue
            for layer in range(adapter.n_layers):
                reference_restored_prob(
                    adapter, noisy, clean, corrupted, kind, token, layer, settings.window, prompt.answer_id
                )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--facts", type=int, default=3, help="correctly answered facts to trace")
    parser.add_argument("--reference-facts", type=int, default=1, help="of those, how many to also recompute fully")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the benchmark JSON here")
    parser.add_argument("--smoke", action="store_true", help=f"tiny random model, any fact: {SMOKE}")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. tracing.noise_samples=5")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.facts, args.reference_facts = SMOKE["model"], SMOKE["facts"], SMOKE["reference_facts"]
        args.overrides = [*SMOKE["overrides"], *args.overrides]
    torch.set_num_threads(args.threads)
    cfg = _config([f"model={args.model}", *args.overrides])
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    settings = trace_settings(cfg, noise_std(loaded.adapter, float(cfg.tracing.noise_scale)), loaded.adapter.n_layers)
    facts = load_known_facts_from_config(cfg.known_facts).records
    prompts = [prepare_fact(loaded.tokenizer, fact) for fact in facts[: max(64, 8 * args.facts)]]
    screening = screen_facts(loaded, prompts, int(cfg.tracing.screen_batch_size))
    correct = set(screening.loc[screening.correct, "known_id"])
    chosen = [p for p in prompts if p.fact.known_id in correct or args.smoke][: args.facts]
    if not chosen:
        raise SystemExit(f"{args.model} answers none of the first {len(prompts)} known facts: nothing to trace")
    print(f"model={loaded.name} threads={torch.get_num_threads()} samples={settings.noise_samples} "
          f"window={settings.window} kinds={settings.all_kinds} severed_at={settings.severed_at}")
    total_computed = total_full = total_runs = total_runs_full = 0
    traced_seconds = reference_reuse = reference_full = 0.0
    n_reference = 0
    for index, prompt in enumerate(chosen):
        segmented = prompt.segmented
        started = time.perf_counter()
        trace = trace_fact(
            loaded.adapter, segmented.input_ids, segmented.subject_start, segmented.subject_end,
            prompt.answer_id, settings, fact_generator(int(cfg.seed), prompt.fact.known_id),
        )
        seconds = time.perf_counter() - started
        traced_seconds += seconds
        total_computed += trace.token_layers_computed
        total_full += trace.token_layers_full
        total_runs += trace.runs_computed
        total_runs_full += trace.runs_full
        line = (
            f"known_id={prompt.fact.known_id} tokens={len(segmented)} subject=[{segmented.subject_start},"
            f"{segmented.subject_end}) reuse: {seconds:.1f} s, {trace.token_layers_computed} token-layers; "
            f"full recomputation: {trace.token_layers_full} token-layers "
            f"({trace.token_layers_full / trace.token_layers_computed:.2f}x)"
        )
        if index < args.reference_facts:
            full_seconds = _full_recomputation_seconds(loaded, prompt, trace, settings, int(cfg.seed))
            reference_reuse += seconds
            reference_full += full_seconds
            n_reference += 1
            line += f", {full_seconds:.1f} s one forward per cell ({full_seconds / seconds:.1f}x wall time)"
        print(line, flush=True)
    flops = model_flops(loaded.adapter, total_computed, total_runs)
    flops_full = model_flops(loaded.adapter, total_full, total_runs_full)
    print(
        f"total: {len(chosen)} facts in {traced_seconds:.1f} s = {len(chosen) / traced_seconds:.3f} facts/s; "
        f"token-layers {total_computed} vs {total_full} full recomputation = "
        f"{total_full / total_computed:.2f}x fewer; model FLOPs {flops:.3g} vs {flops_full:.3g} = "
        f"{flops_full / flops:.2f}x fewer (unembedding included)"
    )
    timings = {"traced": traced_seconds, "per_fact": traced_seconds / len(chosen)}
    ratios = {"token-layers: full / reuse (counts)": total_full / total_computed,
              "model FLOPs: full / reuse (counts)": flops_full / flops}
    goals = []
    if n_reference:
        timings.update(reference_reuse=reference_reuse, reference_full=reference_full)
        ratios["full recomputation / reuse (wall, reference facts)"] = reference_full / reference_reuse
        goals.append(goal("full recomputation / reuse (wall)", reference_full / reference_reuse, 1.0, at_most=False))
    settings_json = {"facts": len(chosen), "reference_facts": n_reference, "threads": torch.get_num_threads(),
                     "noise_samples": settings.noise_samples, "window": settings.window,
                     "kinds": list(settings.all_kinds), "severed_at": settings.severed_at,
                     "only_correct": not args.smoke, "overrides": list(args.overrides)}
    write_result(args.out, "tracing_speed", model=loaded.name, device=str(loaded.device), smoke=args.smoke,
                 settings=settings_json, timings=timings, ratios=ratios, goals=goals)


if __name__ == "__main__":
    main()
