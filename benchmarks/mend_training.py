"""MEND's training (rule ``edit_mend_train``): each step's runs from the lowest edited layer on, the
stream entering it computed once per batch (``_BelowEditedLayers``), against the whole forward each
time (the path before), side by side in one run on the same cases, steps and seed, alternately; the
trained editors must be equal bit for bit. The rule's own settings except ``train_steps`` and
``n_norm_cases`` (both paths run the same normalisation; fewer cases keep the timing on the steps).

    python benchmarks/mend_training.py [--model smollm2-135m] [--steps 10] [--repeats 2] [--out F.json] [--smoke]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from backlens.bench import goal, write_result
from backlens.conf import DEFAULT_MODEL
from backlens.editing.base import NoEdit
from backlens.editing.mend_training import train_mend
from backlens.editing.run_config import other_method_hparams, requests_in_range
from backlens.models.adapters import ArchitectureAdapter
from backlens.models.loading import load_model
from backlens.project import project_root

SMOKE = {"model": "tiny-llama", "steps": 2, "repeats": 1}
GOAL = 1.2  # CPU time of the whole forward per step over the split one (estimated share of the lower blocks)


def train(loaded, requests, hparams, folder: Path, name: str, *, whole: bool) -> dict[str, torch.Tensor]:
    """The trained networks; ``whole``: every run through the whole model (no layer-range forward)."""
    original = ArchitectureAdapter.supports_layer_ranges
    if whole:
        ArchitectureAdapter.supports_layer_ranges = property(lambda self: False)
    try:
        return train_mend(NoEdit(loaded, {}), requests, hparams, folder / f"{name}.pt", seed=0)["networks"]
    finally:
        ArchitectureAdapter.supports_layer_ranges = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=10, help="training steps per run")
    parser.add_argument("--norm-cases", type=int, default=2, help="normalisation cases per run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help=f"seconds: {SMOKE}")
    args = parser.parse_args()
    model, steps, repeats = ((SMOKE["model"], SMOKE["steps"], SMOKE["repeats"]) if args.smoke
                             else (args.model, args.steps, args.repeats))
    with initialize_config_dir(config_dir=str(project_root() / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={model}"])
    loaded = load_model(cfg.model, device="cpu", dtype=cfg.dtype)
    hparams = {**other_method_hparams(cfg, "mend", loaded.adapter.n_layers), "train_steps": steps,
               "n_norm_cases": args.norm_cases, "checkpoint_every": steps}
    training = cfg.editing.mend_training
    requests = requests_in_range(cfg, int(training.first_case), int(training.n_cases), "editing.mend_training")
    wall: dict[str, list[float]] = {"split": [], "whole": []}
    cpu: dict[str, list[float]] = {"split": [], "whole": []}
    networks = {}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(repeats):
            for name in ("whole", "split"):
                started, started_cpu = time.perf_counter(), time.process_time()
                networks[name] = train(loaded, requests, hparams, Path(folder), f"{name}{repeat}", whole=name == "whole")
                wall[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - started_cpu)
    if any(not torch.equal(networks["split"][key], networks["whole"][key]) for key in networks["whole"]):
        raise SystemExit("the split training's editor differs from the whole forward's")
    split_cpu, whole_cpu = min(cpu["split"]), min(cpu["whole"])
    write_result(args.out, Path(__file__).stem, model=loaded.name, device="cpu", smoke=args.smoke,
                 settings={"layers": list(hparams["layers"]), "steps": steps, "norm_cases": args.norm_cases,
                           "repeats": repeats, "train_threads": hparams.get("train_threads"), "editors_equal": True},
                 timings={"training_split": min(wall["split"]), "training_whole": min(wall["whole"]),
                          "training_split_cpu": split_cpu, "training_whole_cpu": whole_cpu},
                 ratios={"whole_over_split": min(wall["whole"]) / min(wall["split"]),
                         "whole_over_split_cpu": whole_cpu / split_cpu},
                 goals=[goal("MEND training whole forward / split (CPU)", whole_cpu / split_cpu, GOAL, at_most=False)])


if __name__ == "__main__":
    main()
