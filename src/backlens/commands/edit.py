"""``backlens edit``: the top next tokens before and after one edit; the weights are restored after."""

from __future__ import annotations

import argparse
import sys
import time

import yaml

from backlens.commands.loading import load_for
from backlens.commands.render import table, token_text
from backlens.errors import UserError

METHODS = ("shift", "shift_centered", "shift_whitened", "rome", "memit", "ft", "ft_mlp0")
HELP = "apply one edit (shift, ROME, MEMIT, FT), show the top next tokens before and after, then restore"
EPILOG = """\
The method's hyper-parameters are the pipeline's (conf/method/<method>.yaml, per model); --set
overrides them. ROME, MEMIT and shift_whitened read the FF2 statistics the pipeline makes
(results/<model>/editing/ff2_mom2.pt, rule edit_covariance). The model's weights are restored bit
for bit before the command ends.

examples:
  backlens edit --method shift "The Eiffel Tower is located in" --subject "The Eiffel Tower" --target " Rome"
  backlens edit --method ft "{} is located in" --subject "The Eiffel Tower" --target " Rome" \\
      --prompt "The Eiffel Tower is in the city of" --prompt "The Louvre is located in"
  backlens edit --method shift "The Eiffel Tower is located in" --subject "The Eiffel Tower" --target " Rome" \\
      --set layer=20 --set eta=0.5
"""


def add_parser(commands, shared: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("edit", parents=[shared], help=HELP, description=HELP, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", help="the edit prompt ('{}' marks the subject's slot, or write the subject out)")
    parser.add_argument("--subject", required=True, help="the subject in the prompt (written out, it must occur there once)")
    parser.add_argument("--target", required=True, help="the new answer, e.g. ' Rome'")
    parser.add_argument("--method", default="shift", choices=METHODS, help="editing method (default: %(default)s)")
    parser.add_argument("--prompt", dest="prompts", action="append", default=[], metavar="TEXT",
                        help="another prompt to show before and after (repeatable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a hyper-parameter, e.g. layer=20 or eta=0.5 (repeatable)")
    parser.add_argument("--top-k", type=int, default=5, help="next tokens shown per prompt (default: 5)")
    parser.set_defaults(handler=run)


def parse_overrides(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: write KEY=VALUE, e.g. --set eta=0.5")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def side_by_side(before, after, k: int) -> str:
    """One block per prompt: rank, token and probability before and after."""
    blocks = []
    for prompt, rows in before.groupby("prompt", sort=False):
        edited = after[after.prompt == prompt].reset_index(drop=True)
        rows = rows.reset_index(drop=True)
        frame = rows[["rank"]].copy()
        frame["before"] = rows.token.map(token_text)
        frame["p before"] = [f"{p:.3g}" for p in rows.prob]
        frame["after"] = edited.token.map(token_text)
        frame["p after"] = [f"{p:.3g}" for p in edited.prob]
        blocks.append(f"{prompt!r}\n" + table(frame))
    return "\n\n".join(blocks)


def describe(hparams: dict) -> str:
    keys = [k for k in ("layer", "layers", "eta", "direction", "key", "lr", "norm_constraint", "mom2_update_weight")
            if k in hparams]
    return ", ".join(f"{k}={hparams[k]}" for k in keys)


def run(args: argparse.Namespace) -> int:
    from backlens.api.editing import editor, next_tokens
    from backlens.api.lens import target_token
    from backlens.data.segments import place_subject

    if args.top_k < 1:
        raise UserError("--top-k must be at least 1")
    overrides = parse_overrides(args.overrides)
    prompt, _ = place_subject(args.prompt, args.subject)  # a wrong subject fails before the model loads
    loaded = load_for(args)
    prompts = [prompt, *args.prompts]
    before = next_tokens(loaded, prompts, args.top_k)
    print(f"applying {args.method} (ROME and MEMIT optimise for up to a minute on a CPU)...", file=sys.stderr)
    target_token(loaded.tokenizer, prompt, args.target)  # an empty target fails before the editor is built
    started = time.perf_counter()
    handle = editor(loaded, args.method, **overrides)
    setup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    with handle.edit(args.prompt, args.subject, args.target) as result:
        seconds = time.perf_counter() - started
        after = next_tokens(loaded, prompts, args.top_k)
    facts = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.facts.items())
    print(f"{loaded.name}: {args.method} ({describe(result.hparams)}): {prompt!r} -> {args.target!r}")
    print(f"edit: {facts or 'no report'} ({seconds:.1f} s)")
    if result.facts.get("skipped"):
        print("the model already predicts the target's first token: shift skips such edits "
              "(--set skip_if_predicted=false applies it anyway)")
    print()
    print(side_by_side(before, after, args.top_k))
    print("\nweights restored (bit-identical to before the edit)")
    print(f"set-up: {setup_seconds:.1f} s, edit: {seconds:.1f} s", file=sys.stderr)
    return 0
