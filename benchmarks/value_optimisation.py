"""ROME / MEMIT's value optimisation (v*, z*): the path reduced to what the loss reads (issue 23)
against the whole-model path it replaced (tests/reference_value_optimisation.py) and against the
same path on whole rows (``from_subject=False``: every position of every row from the edited layer
on, not only those from the edit position), side by side in one run on the same request, templates
and model; the three are timed alternately.

    python benchmarks/value_optimisation.py [--model smollm2-135m] [--repeats 2] [--out F.json] [--smoke]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the reference implementation lives beside its test

from backlens.api.models import DEFAULT_MODEL, load  # noqa: E402
from backlens.bench import goal, write_result  # noqa: E402
from backlens.editing.base import NoEdit  # noqa: E402
from backlens.editing.keys_values import ROME_TEMPLATE_LENGTHS, context_templates, optimise_target  # noqa: E402
from backlens.api.editing import method_config  # noqa: E402
from backlens.editing.methods import method_hparams  # noqa: E402
from backlens.editing.requests import EditRequest  # noqa: E402
from reference_value_optimisation import reference_optimise_target  # noqa: E402

REQUEST = EditRequest(0, "The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English", "French")
GOAL = 0.5  # the goal for ROME against the original code; here: new against the old path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny random GPT-2, one repeat")
    args = parser.parse_args()
    model_name, repeats = ("tiny-gpt2", 1) if args.smoke else (args.model, args.repeats)
    torch.set_num_threads(args.threads)
    loaded = load(model_name)
    hparams = method_hparams(method_config("rome", loaded.name), loaded.name, loaded.adapter.n_layers)
    editor = NoEdit(loaded, hparams)
    groups = context_templates(editor, hparams.get("context_template_length_params", ROME_TEMPLATE_LENGTHS), None, 0)
    templates = [t for group in groups for t in group]
    layer = int(hparams["layer"])
    # Wall time and this process's CPU time: on a shared, loaded machine the CPU time is the
    # steadier of the two (other jobs' load stretches wall time, not the work done).
    times: dict[str, list[float]] = {"new": [], "old": [], "rows": []}
    cpu: dict[str, list[float]] = {"new": [], "old": [], "rows": []}
    steps = {}
    variants = (("old", reference_optimise_target, {}), ("rows", optimise_target, {"from_subject": False}),
                ("new", optimise_target, {}))
    for _ in range(repeats):
        for name, function, options in variants:
            start, start_cpu = time.perf_counter(), time.process_time()
            result = function(editor, REQUEST, templates, layer, "mlp", hparams, **options)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            steps[name] = result.steps
    new_s, old_s = min(times["new"]), min(times["old"])
    ratio = new_s / old_s
    write_result(args.out, Path(__file__).stem, model=loaded.name, device=str(loaded.device), smoke=args.smoke,
                 settings={"method": "rome", "layer": layer, "templates": len(templates), "repeats": repeats,
                           "threads": args.threads, "steps": steps},
                 timings={"value_optimisation_new": new_s, "value_optimisation_old": old_s,
                          "value_optimisation_rows": min(times["rows"]),
                          "value_optimisation_new_cpu": min(cpu["new"]), "value_optimisation_old_cpu": min(cpu["old"]),
                          "value_optimisation_rows_cpu": min(cpu["rows"])},
                 ratios={"new_over_old": ratio, "new_over_old_cpu": min(cpu["new"]) / min(cpu["old"]),
                         "new_over_rows": new_s / min(times["rows"]),
                         "new_over_rows_cpu": min(cpu["new"]) / min(cpu["rows"])},
                 goals=[goal("value optimisation new / old", ratio, GOAL)])

if __name__ == "__main__":
    main()
