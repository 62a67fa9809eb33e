"""Per-edit latency of the forward pass shift variants against FT, ROME, MEMIT and MEND, in one run.

ROME/MEMIT and the whitened shift use the cached FF2 statistics and MEND the cached editor (rules
edit_covariance and edit_mend_train; their one-off cost is not part of an edit). Every edit is
undone bit for bit before the next. Prints one line per method, the ROME / shift ratio (issue 5
goal: >= 50x) and each shift variant's time over a bare forward pass of the same prompts (issue
17 goal: one forward pass, i.e. a ratio near 1).

Usage (from the project root, inside the environment, after the two cached rules ran):
    python benchmarks/editing_latency.py [--model smollm2-135m] [--cases 5] [--device cpu]
        [--methods shift shift_centered shift_whitened rome] [--out results/smollm2-135m/editing/latency.csv]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir

from backlens.editing.methods import build_editor
from backlens.editing.weights import restored_after
from backlens.io import write_table
from backlens.models.loading import load_model
from backlens.stages.editing_common import evaluation_requests, user_method_overrides

METHODS = ["shift", "shift_centered", "shift_whitened", "ft", "ft_mlp0", "rome", "memit", "mend"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    args = parser.parse_args()
    if "shift" not in args.methods:
        args.methods = ["shift", *args.methods]
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        configs = {m: compose("config", [f"model={args.model}", f"method={m}", f"device={args.device}",
                                         f"editing.n_cases={args.cases}"]) for m in args.methods}
    base = configs["shift"]
    loaded = load_model(base.model, device=base.device, dtype=base.dtype)
    requests = evaluation_requests(base)
    bare = []
    with torch.no_grad():
        for request in requests:
            ids = torch.tensor([loaded.tokenizer(request.prompt)["input_ids"]], device=loaded.device)
            loaded.model(input_ids=ids)  # warm-up of this shape
            started = time.perf_counter()
            loaded.model(input_ids=ids)
            if loaded.device.type == "cuda":
                torch.cuda.synchronize()
            bare.append(time.perf_counter() - started)
    bare_median = statistics.median(bare)
    print(f"bare forward of the edit prompt: median {bare_median:.4f} s")
    rows = []
    for method, cfg in configs.items():
        editor, _ = build_editor(loaded, cfg.method, extra=user_method_overrides(cfg, cfg.method.name))
        times = []
        for request in requests:
            with restored_after(editor.edited_parameters()):
                started = time.perf_counter()
                editor.apply(request)
                if loaded.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
        rows.append({"model": args.model, "method": method, "n_edits": len(times),
                     "median_seconds": statistics.median(times), "mean_seconds": statistics.fmean(times)})
        print(f"{method:8s} per-edit median {rows[-1]['median_seconds']:.4f} s  mean {rows[-1]['mean_seconds']:.4f} s")
    frame = pd.DataFrame(rows).set_index("method")
    frame["ratio_to_bare_forward"] = frame["median_seconds"] / bare_median
    for method in [m for m in frame.index if m.startswith("shift")]:
        print(f"{method} / bare forward: {frame.loc[method, 'ratio_to_bare_forward']:.2f}x (goal: one forward pass)")
    if "rome" in frame.index:
        ratio = frame.loc["rome", "median_seconds"] / frame.loc["shift", "median_seconds"]
        print(f"ROME / shift per-edit time: {ratio:.0f}x (goal: >= 50x)")
    out = Path(args.out or f"results/{args.model}/editing/latency.csv")
    write_table(frame.reset_index(), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
