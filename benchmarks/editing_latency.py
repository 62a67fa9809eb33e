"""Seconds per edit and seconds of evaluation per case of every editing method, in one run.

Per method: the edit alone (``<method>_edit_s``, median over the cases) and the evaluation of a
case without the edit (``<method>_eval_s`` for cases that only score prompts,
``<method>_eval_generating_s`` for cases that also sample text, which ``evaluate_editor`` runs
together as the rule ``edit_evaluate`` does); Table 7's
perplexity (the first ``editing.n_perplexity_cases`` cases) apart, once after the first case's edit:
per case as the rule computes it, the stream entering the edited block cached (``<method>_perplexity_s``;
an editor's first case also fills the cache, ``<method>_perplexity_first_s``), beside the whole
forward (``<method>_perplexity_full_s``), the ratio ``<method>_perplexity_over_full`` and both values
(``perplexity_values``: they agree to float round-off).
The efficacy by free generation (issue 26; every case of the rule, greedy, a fixed token budget) is
left out of ``<method>_eval_s`` (so it stays comparable with the earlier runs and the reference path)
and timed on its own, once, on the ``--generation-batch`` cases with the unedited weights (its cost
does not depend on them): ``free_generation_alone_s`` per case, each case's prompts in one batch,
and ``free_generation_batch_s`` per case, the cases in one batch (the rule's path for every method,
without the per-row hook's products); the ratios ``shift_free_generation_{alone,batch}_over_eval`` give the time it adds to a
shift scoring case's evaluation. ``<method>_eval_generating_s`` includes it, as the rule runs it.
The 4 s goal per generating case is read at the pipeline's own batch: ``--generation-batch``
cases (default ``GENERATION_CASES_PER_BATCH``, as the rule shares one generation batch) edited by the
shift and evaluated together (``shift_eval_generating_batch_s``, per case).
``--reference`` also times the reference scoring path side by side (``*_reference_s`` and the
ratios ``<method>_eval_over_reference``). Every edit is undone bit for bit before the next. Also printed:
the ROME / shift ratio (issue 5 goal: >= 50x) and each shift variant's edit time over a bare
forward pass of the edit prompt (issue 17 goal: one forward pass, a ratio near 1).

ROME/MEMIT and the whitened shift read the cached FF2 statistics and MEND the cached editor
(rules edit_covariance and edit_mend_train; their one-off cost is not part of an edit); a method
whose file is absent is left out with a note. ``--smoke``: the tiny random Llama, 3 cases (2 generating), shift,
FT and ROME (2 context templates, 4 forwards) with statistics computed on the fly from the tiny
model's own samples, and the reference path side by side (seconds); ``--model tiny-gpt2`` with
``--smoke`` keeps that tiny model instead.

``--original-rome PATH`` (a kmeng01/rome checkout kept outside this repository): also times the
original ``rome.rome_main.execute_rome`` beside our ROME on the same cases, model object,
templates, hyper-parameters and FF2 second moment (``benchmarks/support/original_rome.py`` says
what is shimmed around it, never edited), alternating per case after one warm-up each:
``rome_original_edit_s`` and ours timed beside it ``rome_beside_original_edit_s`` (medians), the
ratio ``rome_edit_over_original`` (issue 23 goal: <= 0.5), the relative Frobenius difference of the
two updates per case (``rome_original_update_rel_diff``; the largest in ``settings.original_rome``
with the checkout's commit: git, a ``COMMIT`` file at its root, or ``--original-rome-commit``) and
the ``ROMEHyperParams`` the original ran with (``rome_original_hparams``).
``make bench ORIGINAL_ROME=PATH`` passes it on.

Usage (from the project root, inside the environment):
    python benchmarks/editing_latency.py [--model smollm2-135m] [--cases 4] [--generating-cases 2] [--generation-batch 10] [--reference]
        [--threads 1] [--methods shift rome ...] [--out results/bench/editing_latency.json] [--smoke]
        [--original-rome PATH [--original-rome-commit SHA]]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from backlens.bench import goal, write_result
from backlens.conf import DEFAULT_MODEL
from backlens.editing.covariance import accumulate_second_moments, load_second_moment
from backlens.editing.evaluation import GENERATION_CASES_PER_BATCH, CaseLog, evaluate_case, evaluate_editor
from backlens.editing.free_generation import free_generation_rows
from backlens.editing.methods import build_editor
from backlens.editing.perplexity import HeldoutPerplexity, perplexity
from backlens.editing.run_config import evaluation_requests, user_method_overrides
from backlens.editing.weights import restored_after
from backlens.models.loading import load_model

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.original_rome import OriginalRome, OriginalRomeError, check_checkout, checkout_commit, time_beside  # noqa: E402

METHODS = ["shift", "shift_centered", "shift_whitened", "ft", "ft_mlp0", "rome", "memit", "mend"]
SMOKE_METHODS = ["shift", "ft", "rome"]
# Issue 23's goals on 2 CPU cores with SmolLM2-135M (seconds of evaluation per case), and ROME's
# seconds per edit against the original code's on the same request, model and machine.
EVAL_GOAL_GENERATING_S, EVAL_GOAL_S = 4.0, 1.0
ROME_OVER_ORIGINAL_GOAL = 0.5


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _tiny_statistics(loaded, folder: Path) -> Path:
    """FF2 second moments of every layer of a tiny model from its own samples (as the tests' fixture)."""
    path = folder / "ff2_mom2.pt"
    corpus = {"source": "model_samples", "path": None, "top_k": 40, "seed": 1, "block_tokens": 48, "batch_size": 8, "n_blocks": 16}
    sums = accumulate_second_moments(loaded, list(range(loaded.adapter.n_layers)), corpus, path.with_suffix(".partial"))
    torch.save({"mom2": {layer: s / sums["n_tokens"] for layer, s in sums["sums"].items()}, "corpus": sums["corpus"]}, path)
    return path


def _missing_file(method_cfg) -> str | None:
    """The cached file a method needs and does not find (statistics, MEND's editor), else None."""
    for key in ("stats_path", "checkpoint"):
        value = (method_cfg.get("base") or {}).get(key)
        if value is not None and not Path(str(value)).exists():
            return str(value)
    return None


def _bare_forward_s(loaded, requests) -> float:
    times = []
    with torch.no_grad():
        for request in requests:
            ids = torch.tensor([loaded.tokenizer(request.prompt)["input_ids"]], device=loaded.device)
            loaded.model(input_ids=ids)  # warm-up of this shape
            started = time.perf_counter()
            loaded.model(input_ids=ids)
            _sync(loaded.device)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def _generating_together(editor, requests, settings, label: str) -> tuple[list[float], float]:
    """Edit and evaluate ``requests`` as the rule does, every one generating (their texts share the
    generation batches when the edits change only FF2 weights): (each edit's seconds, evaluation seconds per case)."""
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        rows = evaluate_editor(editor, requests, CaseLog(Path(folder) / "cases.jsonl", "bench"), settings,
                               generation_case_ids={r.case_id for r in requests}, perplexity_case_ids=set(),
                               perplexity_blocks=None, label=label)
        _sync(editor.device)
        total = time.perf_counter() - started
    edits = [float(row["edit_seconds"]) for row in rows]
    return edits, (total - sum(edits)) / len(rows)


def _free_generation_s(loaded, requests, settings) -> tuple[float, float]:
    """Seconds per case of the efficacy by free generation on ``requests`` (unedited weights, after an
    untimed warm-up): each case alone, and all of them in one batch."""
    free = settings["free_generation"]
    free_generation_rows(loaded.model, loaded.tokenizer, requests[:1], free)
    started = time.perf_counter()
    for request in requests:
        free_generation_rows(loaded.model, loaded.tokenizer, [request], free)
    _sync(loaded.device)
    alone = (time.perf_counter() - started) / len(requests)
    started = time.perf_counter()
    free_generation_rows(loaded.model, loaded.tokenizer, requests, free)
    _sync(loaded.device)
    return alone, (time.perf_counter() - started) / len(requests)


def _time_method(editor, requests, settings, heldout, n_generating: int, reference: bool) -> dict[str, list[float]]:
    """Evaluation seconds per case without the edit (whole case minus the edit).

    Cases from ``n_generating`` on only score prompts: each through ``evaluate_case``. The first
    ``n_generating`` also sample text: together through ``evaluate_editor``, as the rule runs them
    (their texts share one batch when the edits are rank-one), the time divided by their number.
    Perplexity is timed once apart. With ``reference``, every case is also evaluated by the
    reference path (one sequence per prompt and target, each case's generation alone), before the
    batched one, so load affects both alike."""
    times: dict[str, list[float]] = {"edit": []}
    generating, scoring = requests[:n_generating], requests[n_generating:]
    for request in scoring:
        for per_pair in ([True, False] if reference else [False]):
            with restored_after(editor.edited_parameters()):
                started = time.perf_counter()
                row = evaluate_case(editor, request, settings, generate=False, perplexity_blocks=None, per_pair=per_pair,
                                    free_generation=False)
                _sync(editor.device)
                total = time.perf_counter() - started
            times.setdefault("eval_reference" if per_pair else "eval", []).append(total - float(row["edit_seconds"]))
            if not per_pair:
                times["edit"].append(float(row["edit_seconds"]))
    if generating:
        if reference:
            for request in generating:
                with restored_after(editor.edited_parameters()):
                    started = time.perf_counter()
                    row = evaluate_case(editor, request, settings, generate=True, perplexity_blocks=None, per_pair=True)
                    _sync(editor.device)
                    total = time.perf_counter() - started
                times.setdefault("eval_generating_reference", []).append(total - float(row["edit_seconds"]))
        edits, per_case = _generating_together(editor, generating, settings, "benchmark")
        times["edit"] += edits
        times["eval_generating"] = [per_case]
    return times


def _time_perplexity(editor, request, heldout) -> tuple[dict[str, float], dict[str, object]]:
    """Table 7's perplexity after ``request``'s edit, side by side: seconds of the whole forward
    (``perplexity_full``), of an editor's first case (``perplexity_first``: it also computes the
    stream entering the edited block, or the unedited value when nothing changed) and of each later
    case (``perplexity``, what the rule pays per case); and the values, the cached path's start block."""
    seconds, values = {}, {}
    with restored_after(editor.edited_parameters()) as snapshot:
        editor.apply(request)
        changed = snapshot.changed_parameters()
        cached = HeldoutPerplexity(editor, heldout)
        for kind, compute in (("perplexity_full", lambda: perplexity(editor, heldout)),
                              ("perplexity_first", lambda: cached(changed)), ("perplexity", lambda: cached(changed))):
            started = time.perf_counter()
            values[kind] = compute()
            _sync(editor.device)
            seconds[kind] = time.perf_counter() - started
    full, value = values["perplexity_full"], values["perplexity"]
    start = cached.start_block(changed) if changed else "nothing changed: the unedited value"
    return seconds, {"full": full, "cached": value, "rel_diff": abs(value - full) / full,
                     "start_block": "outside every block: the whole forward" if start is None else start}


def _beside_original(result: dict, original: dict, editor, requests) -> dict:
    """Our ROME and kmeng01/rome's execute_rome side by side (``--original-rome``): timings, ratio and
    goal into ``result``; the per-case update differences and forwards returned for the JSON."""
    settings = result["settings"]
    settings["original_rome"] = original
    if editor is None:
        settings["left_out"]["rome_original"] = "ROME is left out"
        print("original ROME left out: our ROME is left out")
        return {}
    second_moment = load_second_moment(editor.hparams["stats_path"], editor.layer) if editor.inverse_mom2 is not None else None
    runner = OriginalRome(original["path"], editor, second_moment if second_moment is not None else torch.eye(1))
    beside = time_beside(editor, runner, requests)
    result["rome_original_edit_s"] = statistics.median(beside["original_s"])
    result["rome_beside_original_edit_s"] = statistics.median(beside["ours_s"])
    ratio = result["rome_beside_original_edit_s"] / result["rome_original_edit_s"]
    result["ratios"]["rome_edit_over_original"] = ratio
    name = "rome_edit_over_original: ROME per edit / original kmeng01/rome per edit, same request, model, machine"
    result["goals"].append(goal(name, ratio, ROME_OVER_ORIGINAL_GOAL))
    original["max_update_rel_diff"] = max(beside["rel_diff"])
    print(f"original ROME ({original['commit'][:7]}) edit {result['rome_original_edit_s']:.4f} s, ours beside it "
          f"{result['rome_beside_original_edit_s']:.4f} s; update relative difference per case: "
          + ", ".join(f"{d:.2e}" for d in beside["rel_diff"])
          + f"; forwards ours {beside['ours_forwards']}, original {beside['original_forwards']}", flush=True)
    return {"rome_original_hparams": runner.hparams_dict, "rome_original_update_rel_diff": beside["rel_diff"], "rome_beside_original_forwards": beside["ours_forwards"],
            "rome_original_forwards": beside["original_forwards"],
            "rome_beside_original_edit_seconds": beside["ours_s"], "rome_original_edit_seconds": beside["original_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help=f"default {DEFAULT_MODEL} (--smoke: tiny-llama)")
    parser.add_argument("--cases", type=int, default=4, help="cases per method (CounterFact records 0..cases-1)")
    parser.add_argument("--generating-cases", type=int, default=2,
                        help="how many of them also sample text and measure perplexity, as the pipeline's first cases do")
    parser.add_argument("--generation-batch", type=int, default=GENERATION_CASES_PER_BATCH,
                        help="generating cases the shift evaluates together for the 4 s goal (the rule's batch)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the pipeline's editing jobs run with one)")
    parser.add_argument("--methods", nargs="+", default=None, choices=METHODS)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--smoke", action="store_true", help="tiny random Llama, 3 cases, shift / FT / ROME: seconds")
    parser.add_argument("--reference", action="store_true",
                        help="also time the reference scoring path (one sequence per prompt and target) side by side")
    parser.add_argument("--original-rome", default=None, metavar="PATH",
                        help="a kmeng01/rome checkout outside this repository: time its execute_rome beside ours")
    parser.add_argument("--original-rome-commit", default=None, metavar="SHA",
                        help="the checkout's commit where PATH is no git checkout and has no COMMIT file")
    args = parser.parse_args()
    original = None
    if args.original_rome is not None:
        try:  # before the model loads: a wrong path costs seconds, not minutes
            original = {"path": str(check_checkout(args.original_rome))}
            original["commit"] = checkout_commit(Path(original["path"]), args.original_rome_commit)
        except OriginalRomeError as error:
            sys.exit(f"editing_latency.py: {error}")
    if args.smoke:
        args.model, args.cases, args.generating_cases, args.reference = args.model or "tiny-llama", 3, 2, True
        args.generation_batch = 2
        args.methods = args.methods or SMOKE_METHODS
    args.model = args.model or DEFAULT_MODEL
    methods = args.methods or METHODS
    if "shift" not in methods:
        methods = ["shift", *methods]
    if original is not None and "rome" not in methods:
        methods = [*methods, "rome"]
    torch.set_num_threads(args.threads)
    scratch = tempfile.TemporaryDirectory()
    overrides = [f"model={args.model}", f"device={args.device}",
                 f"editing.n_cases={max(args.cases, args.generation_batch)}"]
    if args.smoke:
        # ROME with 2 templates and 4 forwards: the smoke run checks the plumbing, not ROME's cost.
        overrides += ["editing.evaluation.generation.max_new_tokens=8", "editing.corpus.n_heldout_blocks=2",
                      "editing.corpus.block_tokens=16", f"paths.results={scratch.name}",
                      "++methods.rome.context_template_length_params=[[5,1]]", "++methods.rome.v_num_grad_steps=4"]
    base = _compose([*overrides, "method=shift"])
    loaded = load_model(base.model, device=base.device, dtype=base.dtype)
    if args.smoke:
        overrides.append(f"paths.editing_stats={_tiny_statistics(loaded, Path(scratch.name))}")
    configs = {m: _compose([*overrides, f"method={m}"]) for m in methods}
    batch_requests = evaluation_requests(base)[: args.generation_batch]
    requests = evaluation_requests(base)[: args.cases]
    settings = base.editing.evaluation
    corpus = base.editing.corpus
    # Perplexity costs the same on any tokens: random blocks of the held-out set's shape stand in
    # for the cached one, so the benchmark needs no edit_covariance run.
    heldout = torch.randint(0, loaded.adapter.input_embedding.shape[0], (int(corpus.n_heldout_blocks), int(corpus.block_tokens)), generator=torch.Generator().manual_seed(0))
    bare_s = _bare_forward_s(loaded, requests)
    result: dict[str, object] = {
        "benchmark": Path(__file__).stem, "model": args.model,
        "device": f"{args.device} ({platform.processor() or platform.machine()})",
        "smoke": args.smoke,
        "settings": {"cases": len(requests), "generating_cases": min(args.generating_cases, len(requests)),
                     "generation_batch": len(batch_requests),
                     "reference": args.reference,
                     "threads": torch.get_num_threads(), "max_new_tokens": int(settings.generation.max_new_tokens),
                     "free_generation_margin_tokens": int(settings.free_generation.margin_tokens),
                     "perplexity_blocks": [int(corpus.n_heldout_blocks), int(corpus.block_tokens)],
                     "batch_size": int(settings.batch_size), "methods": [], "left_out": {},
                     "overrides": overrides},
        "bare_forward_s": bare_s, "ratios": {}, "goals": [],
    }
    print(f"bare forward of the edit prompt: median {bare_s:.4f} s")
    result["free_generation_alone_s"], result["free_generation_batch_s"] = _free_generation_s(loaded, batch_requests, settings)
    print(f"free generation per case: {result['free_generation_alone_s']:.4f} s alone, "
          f"{result['free_generation_batch_s']:.4f} s with {len(batch_requests)} cases in one batch", flush=True)
    rome_editor = None
    extra_perplexity: dict[str, dict] = {}
    for method, cfg in configs.items():
        missing = _missing_file(cfg.method)
        if missing is not None:
            result["settings"]["left_out"][method] = f"needs {missing}"
            print(f"{method:15s} left out: needs {missing}")
            continue
        editor, _ = build_editor(loaded, cfg.method, extra=user_method_overrides(cfg, cfg.method.name))
        if method == "rome":
            rome_editor = editor
        times = _time_method(editor, requests, settings, heldout, args.generating_cases, args.reference)
        perplexity_s, extra_perplexity[method] = _time_perplexity(editor, requests[0], heldout)
        if method == "shift":
            result["shift_eval_generating_batch_s"] = _generating_together(editor, batch_requests, settings,
                                                                           "generation batch")[1]
            print(f"shift: {result['shift_eval_generating_batch_s']:.4f} s of evaluation per generating case, "
                  f"{len(batch_requests)} sharing the generation batches", flush=True)
        result["settings"]["methods"].append(method)
        result[f"{method}_edit_s"] = statistics.median(times["edit"])
        line = f"{method:15s} edit {result[f'{method}_edit_s']:.4f} s"
        for kind in ("eval", "eval_generating", "eval_reference", "eval_generating_reference"):
            if times.get(kind):
                result[f"{method}_{kind}_s"] = statistics.median(times[kind])
                line += f"  {kind} {result[f'{method}_{kind}_s']:.4f} s"
        result.update({f"{method}_{kind}_s": value for kind, value in perplexity_s.items()})
        result["ratios"][f"{method}_perplexity_over_full"] = perplexity_s["perplexity"] / perplexity_s["perplexity_full"]
        print(line, flush=True)
        print(f"{method:15s} perplexity full forward {perplexity_s['perplexity_full']:.4f} s, cached: first case "
              f"{perplexity_s['perplexity_first']:.4f} s, each later case {perplexity_s['perplexity']:.4f} s; "
              + ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in extra_perplexity[method].items()),
              flush=True)
        for kind in ("eval", "eval_generating"):
            if f"{method}_{kind}_reference_s" in result:
                result["ratios"][f"{method}_{kind}_over_reference"] = result[f"{method}_{kind}_s"] / result[f"{method}_{kind}_reference_s"]
    ratios = result["ratios"]
    for method in [m for m in result["settings"]["methods"] if m.startswith("shift")]:
        ratios[f"{method}_edit_over_bare_forward"] = result[f"{method}_edit_s"] / bare_s
    if "rome_edit_s" in result:
        ratios["rome_edit_over_shift_edit"] = result["rome_edit_s"] / result["shift_edit_s"]
    if "shift_eval_s" in result:
        for kind in ("alone", "batch"):
            ratios[f"shift_free_generation_{kind}_over_eval"] = result[f"free_generation_{kind}_s"] / result["shift_eval_s"]
    extra = {"perplexity_values": extra_perplexity}
    if original is not None:
        extra.update(_beside_original(result, original, rome_editor, requests))
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}x")
    for kind, bound, what in (
        ("eval_generating_batch", EVAL_GOAL_GENERATING_S, f"per generating case, {len(batch_requests)} sharing a batch"),
        ("eval", EVAL_GOAL_S, "per scoring case"),
    ):
        if f"shift_{kind}_s" in result:
            value = result[f"shift_{kind}_s"]
            name = f"shift_{kind}_s: seconds of evaluation {what} (goal on 2 CPU cores, SmolLM2-135M)"
            result["goals"].append({"name": name, "value": value, "bound": bound, "met": bool(value <= bound)})
    timings = {key[:-2]: value for key, value in result.items() if key.endswith("_s")}
    write_result(args.out, result["benchmark"], model=args.model, device=result["device"], smoke=args.smoke,
                 settings=result["settings"], timings=timings, ratios=ratios, goals=result["goals"], extra=extra)
    scratch.cleanup()


if __name__ == "__main__":
    main()
