"""``backlens trace PROMPT --subject S``: ROME's three indirect-effect maps of one fact."""

from __future__ import annotations

import argparse
import sys
import time

from backlens.commands.loading import load_for
from backlens.errors import UserError

HELP = "causal tracing of one fact: indirect effects of restoring hidden states, MLP and attention outputs"
EPILOG = """\
The subject's token embeddings are noised; then, token by token and layer by layer, the clean
hidden state (one layer) or the clean MLP / attention outputs (a window of layers) are restored,
and the map shows how much of P(answer) comes back (indirect effect = P restored - P corrupted).
Each map prints one row per token (* = subject token) and one character per layer, from ' '
(no effect) to '@' (the largest effect of the three maps), then the row's largest effect and its layer.

examples:
  backlens trace "The Space Needle is in the city of" --subject "The Space Needle"
  backlens trace "{} is in the city of" --subject "The Space Needle" --samples 10 --png needle.png
"""

TITLES = {"residual": "hidden state (one layer restored)", "mlp": "MLP output (window of {w} layers)",
          "attention": "attention output (window of {w} layers)"}


def add_parser(commands, shared: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("trace", parents=[shared], help=HELP, description=HELP, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", help="the prompt ('{}' marks the subject's slot, or write the subject out)")
    parser.add_argument("--subject", required=True, help="the subject to noise")
    parser.add_argument("--target", help="the answer to trace (default: the model's most probable next token)")
    parser.add_argument("--samples", type=int, default=None, help="noise samples (default: conf/tracing, 3; ROME: 10)")
    parser.add_argument("--noise-scale", type=float, default=None, help="noise std in embedding stds (default: 3)")
    parser.add_argument("--window", type=int, default=None, help="layers restored around each MLP/attention centre")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    parser.add_argument("--csv", help="write the effects table (token, layer, kind) as CSV")
    parser.add_argument("--png", help="plot the three maps (PNG)")
    parser.set_defaults(handler=run)


def format_maps(traced) -> str:
    from backlens.api.tracing import MAP_KINDS
    from backlens.commands.render import shade_grid

    effects = traced.effects
    high = max(float(effects[effects.kind.isin(MAP_KINDS)].indirect_effect.max()), 1e-12)
    fact = traced.fact
    subject = range(int(fact["subject_start"]), int(fact["subject_end"]))
    lines = []
    for kind in MAP_KINDS:
        grid = traced.grid(kind)
        grid.index = [f"{label}{'*' if i in subject else ''}" for i, label in enumerate(grid.index)]
        n_layers = grid.shape[1]
        lines.append(f"{TITLES[kind].format(w=traced.settings.window)}: indirect effect per token (rows) and layer (columns)")
        ruler = "".join(str(layer // 10) if layer % 10 == 0 else " " for layer in range(n_layers))
        body = shade_grid(grid, low=0.0, high=high)
        width = body[0].index("|")
        lines.append(" " * (width + 1) + ruler)
        for label, row, text in zip(grid.index, grid.itertuples(index=False), body):
            values = list(row)
            best = max(range(n_layers), key=lambda layer: values[layer])
            lines.append(f"{text}  max {values[best]:+.3g} at layer {best}")
        lines.append("")
    lines.append(f"scale: ' ' = 0 ... '@' = {high:.3g} (the largest indirect effect of the three maps); "
                 "ruler digits mark layers 0, 10, 20, ...")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from backlens.data.segments import place_subject
    from backlens.api.tracing import trace

    if args.samples is not None and args.samples < 1:
        raise UserError("--samples must be at least 1")
    place_subject(args.prompt, args.subject)  # a wrong subject fails before the model loads
    loaded = load_for(args)
    started = time.perf_counter()
    traced = trace(loaded, args.prompt, args.subject, args.target, noise_samples=args.samples,
                   noise_scale=args.noise_scale, window=args.window, seed=args.seed, progress=True)
    seconds = time.perf_counter() - started
    fact = traced.fact
    print(f"{loaded.name}: {fact['prompt']!r} -> {fact['answer_token']!r}, subject {fact['subject']!r} noised "
          f"({traced.settings.noise_samples} noise samples of std {traced.settings.noise_std:.3g}, seed {args.seed})")
    print(f"P(answer): clean {fact['p_clean']:.3g}, subject corrupted {fact['p_corrupted']:.3g}, "
          f"total effect {fact['total_effect']:+.3g}\n")
    print(format_maps(traced))
    if args.csv:
        traced.effects.merge(traced.tokens[["token_index", "token", "segment"]], on="token_index").to_csv(
            args.csv, index=False)
        print(f"wrote {args.csv}", file=sys.stderr)
    if args.png:
        import pandas as pd

        from backlens.figures.tracing import tracing_examples

        figure = tracing_examples(pd.DataFrame([traced.fact]), traced.tokens, traced.effects, 1)
        figure.savefig(args.png, dpi=150)
        print(f"wrote {args.png}", file=sys.stderr)
    print(f"trace: {seconds:.1f} s", file=sys.stderr)
    return 0
