"""The FF2 statistics' sampled corpus (``editing.corpus.source=model_samples``, rule ``edit_covariance``):
its batches decoded together (``editing.corpus.sample_rows``, ``covariance.corpus_batches``) against one
batch per decode (the path before), side by side in one run on the same batches, alternately. The blocks
must be equal token for token; the ratio is the CPU time of one batch per decode over the grouped decode.

    python benchmarks/corpus_sampling.py [--model smollm2-135m] [--batches 4] [--threads 1] [--repeats 1] [--out F.json] [--smoke]

``--batches``: how many of the default corpus' batches (16 blocks of 128 tokens each) both paths sample;
the rule samples its 15 statistics batches in one decode. ``--threads``: torch threads, 1 as the rule's
job; with 2 threads SmolLM2's grouped blocks differ from the lone ones (the batched logits are not bit
for bit the lone ones there), and the benchmark stops saying so.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from backlens.bench import goal, write_result
from backlens.conf import DEFAULT_MODEL
from backlens.editing.covariance import corpus_batches
from backlens.models.loading import load_model
from backlens.project import project_root

SMOKE = {"model": "tiny-llama", "batches": 3, "repeats": 1, "block_tokens": 8, "batch_size": 2}
GOAL = 1.5  # CPU of one batch per decode over the grouped decode (decoding is memory-bound at 16 rows)


def timed(function: Callable[[], list[torch.Tensor]]) -> tuple[list[torch.Tensor], float, float]:
    started, started_cpu = time.perf_counter(), time.process_time()
    blocks = function()
    return blocks, time.perf_counter() - started, time.process_time() - started_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--batches", type=int, default=4, help="corpus batches each path samples")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the rule's job: 1)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out")
    parser.add_argument("--smoke", action="store_true", help=f"seconds: {SMOKE}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, batches, repeats = ((SMOKE["model"], SMOKE["batches"], SMOKE["repeats"]) if args.smoke
                               else (args.model, args.batches, args.repeats))
    with initialize_config_dir(config_dir=str(project_root() / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={model}"])
    loaded = load_model(cfg.model, device="cpu", dtype=cfg.dtype)
    corpus = {**OmegaConf.to_container(cfg.editing.corpus, resolve=True), "source": "model_samples"}
    if args.smoke:
        corpus.update(block_tokens=SMOKE["block_tokens"], batch_size=SMOKE["batch_size"])
    size = int(corpus["batch_size"])
    paths = {"grouped": {**corpus, "sample_rows": batches * size}, "one_batch": {**corpus, "sample_rows": size}}
    wall: dict[str, list[float]] = {name: [] for name in paths}
    cpu: dict[str, list[float]] = {name: [] for name in paths}
    blocks = {}
    with torch.no_grad():
        for _ in range(repeats):
            for name in ("one_batch", "grouped"):
                blocks[name], seconds, cpu_seconds = timed(lambda c=paths[name]: corpus_batches(loaded, c, range(batches)))
                wall[name].append(seconds)
                cpu[name].append(cpu_seconds)
    if not all(torch.equal(a, b) for a, b in zip(blocks["grouped"], blocks["one_batch"], strict=True)):
        raise SystemExit(f"the grouped decode's blocks differ from one batch per decode's ({args.threads} torch threads)")
    timings = {name: min(values) for name, values in wall.items()}
    timings.update({f"{name}_cpu": min(values) for name, values in cpu.items()})
    ratio = timings["one_batch_cpu"] / timings["grouped_cpu"]
    write_result(args.out, "corpus_sampling", model=loaded.name, device="cpu", smoke=args.smoke,
                 settings={"batches": batches, "batch_size": size, "block_tokens": int(corpus["block_tokens"]),
                           "top_k": int(corpus["top_k"]), "repeats": repeats, "torch_threads": torch.get_num_threads(),
                           "blocks_equal": True},
                 timings=timings,
                 ratios={"one_batch_over_grouped_cpu": ratio},
                 goals=[goal("one batch per decode / grouped decode (CPU)", ratio, GOAL, at_most=False)])


if __name__ == "__main__":
    main()
