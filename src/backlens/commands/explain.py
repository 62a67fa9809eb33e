"""``backlens explain PROMPT TARGET``: the logit lens of x_i and delta_i, layer by layer and token by token."""

from __future__ import annotations

import argparse
import sys
import time

from backlens.commands.loading import load_for
from backlens.commands.render import table, token_text
from backlens.errors import UserError

HELP = "logit lens of the FF1 inputs x_i and FF2 VJPs delta_i of -log p(target | prompt)"
EPILOG = """\
columns: for each token position and layer, the most and least probable token of LL(x_i) (the
FF1 input) and LL(delta_i) (the VJP at the FF2 output); rank: the target's rank in LL(delta_i)
(0 = most probable, V-1 = least; a gradient descent step moves the output by -delta_i, so the
least probable tokens of LL(delta_i) are the ones the step promotes); |delta|: its L2 norm.
'*' marks a cell whose least probable LL(delta) token is the target. Numbers equal the
pipeline's logit_lens_cells / logit_lens_tokens tables for the same prompt.

examples:
  backlens explain "Obama grew up in" " Paris"
  backlens explain "Obama grew up in" " Paris" --layers 20-29 --last
  backlens explain "{} grew up in" " Paris" --subject Obama --csv obama.csv --png obama.png
"""


def add_parser(commands, shared: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("explain", parents=[shared], help=HELP, description=HELP, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", help="the prompt ('{}' marks the subject's slot when --subject is given)")
    parser.add_argument("target", help="the word to predict next, e.g. ' Paris'")
    parser.add_argument("--subject", help="label the subject's tokens with ROME's segments")
    parser.add_argument("--layers", help="layers to print: '20-29', '0,5,10' (default: all)")
    parser.add_argument("--last", action="store_true", help="print the last token position only")
    parser.add_argument("--top-k", type=int, default=3, help="tokens kept per lens end in the CSV (default: 3)")
    parser.add_argument("--normalized", action="store_true", help="rescale vectors to RMS 1 before the lens")
    parser.add_argument("--csv", help="write the layer x token table (all layers and positions) as CSV")
    parser.add_argument("--png", help="draw the table as the pipeline's Fig 4 (PNG)")
    parser.set_defaults(handler=run)


def parse_layers(spec: str | None, n_layers: int) -> list[int]:
    """'20-29,3' -> [3, 20, ..., 29]; negative numbers count from the end (-1 = the last layer)."""
    if not spec:
        return list(range(n_layers))
    chosen: set[int] = set()
    try:
        for part in spec.split(","):
            first, sep, last = part.strip().partition("-") if not part.strip().startswith("-") else (part.strip(), "", "")
            lo = int(first)
            hi = int(last) if sep else lo
            lo, hi = (lo + n_layers if lo < 0 else lo), (hi + n_layers if hi < 0 else hi)
            chosen.update(range(lo, hi + 1))
    except ValueError:
        raise UserError(f"--layers {spec!r}: give layers as '20-29' or '0,5,10'") from None
    outside = sorted(layer for layer in chosen if not 0 <= layer < n_layers)
    if outside or not chosen:
        raise UserError(f"--layers {spec!r}: the model has layers 0-{n_layers - 1}")
    return sorted(chosen)


def format_summary(summary, vocab_size: int, target_text: str) -> str:
    rows = summary.copy()
    hit = rows.delta_bottom == target_text
    for column in ("x_top", "x_bottom", "delta_top", "delta_bottom"):
        rows[column] = rows[column].map(token_text)
    rows["delta_bottom"] = [f"{text}*" if is_hit else text for text, is_hit in zip(rows.delta_bottom, hit)]
    rows["token"] = rows.token.map(token_text)
    rows["rank"] = [str(rank) if rank >= 0 else "-" for rank in rows.delta_target_rank]
    rows["norm"] = [f"{norm:.3g}" for norm in rows.delta_norm]
    columns = ["position", "token", "layer", "x_top", "x_bottom", "delta_top", "delta_bottom", "rank", "norm"]
    headers = {"position": "pos", "x_top": "LL(x) most", "x_bottom": "LL(x) least", "delta_top": "LL(delta) most",
               "delta_bottom": "LL(delta) least", "rank": f"rank/{vocab_size}", "norm": "|delta|"}
    return table(rows.sort_values(["position", "layer"]), columns, headers=headers, right=["rank", "norm"],
                 gap_on="position")


def run(args: argparse.Namespace) -> int:
    from backlens.api.lens import BackwardLens

    if args.top_k < 1:
        raise UserError("--top-k must be at least 1")
    lens = BackwardLens(load_for(args))
    layers = parse_layers(args.layers, lens.adapter.n_layers)
    started = time.perf_counter()
    result = lens.run([args.prompt], [args.target], None if args.subject is None else [args.subject], batch_size=1,
                      tables=("lens_cells", "lens_tokens"), top_k=args.top_k, normalized=args.normalized,
                      progress=args.verbose)
    summary = result.summary(0)
    seconds = time.perf_counter() - started
    cells = result.lens_cells
    head = cells.iloc[0]
    target_text = lens.tokenizer.decode([int(head.target_new_id)])
    shown = summary[summary.layer.isin(layers)]
    if args.last:
        shown = shown[shown.position == shown.position.max()]
    print(f"{lens.name}: {head.prompt!r} -> {args.target!r} (first target token {target_text!r}, "
          f"id {int(head.target_new_id)}; vocabulary {int(head.vocab_size)})")
    print(format_summary(shown, int(head.vocab_size), target_text))
    if args.csv:
        summary.insert(0, "model", lens.name)
        summary.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}", file=sys.stderr)
    if args.png:
        from backlens.figures.lens_tables import logit_lens_figure

        figure = logit_lens_figure(cells, result.lens_tokens)
        figure.savefig(args.png, dpi=150)
        print(f"wrote {args.png}", file=sys.stderr)
    print(f"backward lens: {seconds:.1f} s", file=sys.stderr)
    return 0
