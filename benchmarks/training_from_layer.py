"""Training through a frozen model from the lowest changed layer on (``editing.training.LogitsAbove``):
MEND's editor training (rule ``edit_mend_train``: each step's three runs) and FT-L's edits (both rows,
``ft`` and ``ft_mlp0``) against the whole forward every time (the path before), side by side in one run
on the same cases, steps and seed, alternately. The trained editors and the fine-tuned weights must be
equal bit for bit. MEND runs the rule's settings except ``train_steps`` and ``n_norm_cases`` (both paths
run the same normalisation; fewer cases keep the timing on the steps); FT the method configs' own.

    python benchmarks/training_from_layer.py [--model smollm2-135m] [--steps 10] [--ft-cases 4] [--out F.json] [--smoke]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from backlens.bench import goal, write_result
from backlens.conf import DEFAULT_MODEL
from backlens.editing.base import NoEdit
from backlens.editing.ft import ConstrainedFineTuning
from backlens.editing.mend_training import train_mend
from backlens.editing.run_config import other_method_hparams, requests_in_range
from backlens.editing.weights import restored_after
from backlens.models.adapters import ArchitectureAdapter
from backlens.models.loading import load_model
from backlens.project import project_root

SMOKE = {"model": "tiny-llama", "steps": 2, "ft_cases": 1, "repeats": 1}
GOAL = 1.2  # CPU of the whole forward over the split path, MEND's training (estimated share of the lower blocks)


def timed(function: Callable[[], list[torch.Tensor]], *, whole: bool) -> tuple[list[torch.Tensor], float, float]:
    """``function``'s tensors, wall and CPU seconds; ``whole``: every run through the whole model."""
    original = ArchitectureAdapter.supports_layer_ranges
    if whole:
        ArchitectureAdapter.supports_layer_ranges = property(lambda self: False)
    try:
        started, started_cpu = time.perf_counter(), time.process_time()
        tensors = function()
        return tensors, time.perf_counter() - started, time.process_time() - started_cpu
    finally:
        ArchitectureAdapter.supports_layer_ranges = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=10, help="MEND training steps per run")
    parser.add_argument("--norm-cases", type=int, default=2, help="MEND normalisation cases per run")
    parser.add_argument("--ft-cases", type=int, default=4, help="FT-L edits per run and row")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help=f"seconds: {SMOKE}")
    args = parser.parse_args()
    model, steps, ft_cases, repeats = ((SMOKE["model"], SMOKE["steps"], SMOKE["ft_cases"], SMOKE["repeats"])
                                       if args.smoke else (args.model, args.steps, args.ft_cases, args.repeats))
    with initialize_config_dir(config_dir=str(project_root() / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={model}"])
    loaded = load_model(cfg.model, device="cpu", dtype=cfg.dtype)
    n_layers = loaded.adapter.n_layers
    mend = {**other_method_hparams(cfg, "mend", n_layers), "train_steps": steps, "n_norm_cases": args.norm_cases,
            "checkpoint_every": steps}
    training = cfg.editing.mend_training
    mend_requests = requests_in_range(cfg, int(training.first_case), int(training.n_cases), "editing.mend_training")
    ft_requests = requests_in_range(cfg, int(cfg.editing.first_case), ft_cases, "editing")
    folder = Path(tempfile.mkdtemp())

    def mend_training() -> list[torch.Tensor]:
        state = train_mend(NoEdit(loaded, {}), mend_requests, mend, folder / "mend.pt", seed=0)
        return list(state["networks"].values())

    def fine_tuning(method: str) -> Callable[[], list[torch.Tensor]]:
        editor = ConstrainedFineTuning(loaded, other_method_hparams(cfg, method, n_layers))

        def edits() -> list[torch.Tensor]:
            weights = []
            for request in ft_requests:
                with restored_after(editor.edited_parameters()):
                    editor.apply(request)
                    weights += [p.detach().clone() for p in editor.edited_parameters()]
            return weights

        return edits

    work = {"mend_training": mend_training, "ft": fine_tuning("ft"), "ft_mlp0": fine_tuning("ft_mlp0")}
    wall = {f"{name}_{path}": [] for name in work for path in ("split", "whole")}
    cpu = {key: [] for key in wall}
    results = {}
    for _ in range(repeats):
        for name, function in work.items():
            for path in ("whole", "split"):
                results[f"{name}_{path}"], seconds, cpu_seconds = timed(function, whole=path == "whole")
                wall[f"{name}_{path}"].append(seconds)
                cpu[f"{name}_{path}"].append(cpu_seconds)
    for name in work:
        if not all(torch.equal(a, b) for a, b in zip(results[f"{name}_split"], results[f"{name}_whole"], strict=True)):
            raise SystemExit(f"{name}: the split path's weights differ from the whole forward's")
    timings = {key: min(values) for key, values in wall.items()}
    timings.update({f"{key}_cpu": min(values) for key, values in cpu.items()})
    ratios = {f"{name}_whole_over_split_cpu": timings[f"{name}_whole_cpu"] / timings[f"{name}_split_cpu"] for name in work}
    write_result(args.out, Path(__file__).stem, model=loaded.name, device="cpu", smoke=args.smoke,
                 settings={"mend_layers": list(mend["layers"]), "mend_steps": steps, "mend_norm_cases": args.norm_cases,
                           "mend_train_threads": mend.get("train_threads"), "ft_cases": ft_cases, "repeats": repeats,
                           "torch_threads": torch.get_num_threads(), "weights_equal": True},
                 timings=timings, ratios=ratios,
                 goals=[goal("MEND training whole forward / from its lowest layer (CPU)",
                             ratios["mend_training_whole_over_split_cpu"], GOAL, at_most=False)])


if __name__ == "__main__":
    main()
