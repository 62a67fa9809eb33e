"""The ``backlens`` command: ``explain``, ``edit`` and ``trace`` on your own prompt.

Every failure the user can fix (unknown model, subject not in the prompt, empty target, missing
statistics) is one ``error: ...`` line on stderr and exit status 1; ``--verbose`` shows the
traceback, the loaders' progress bars and their logs instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from backlens.commands import edit as edit_command
from backlens.commands import explain as explain_command
from backlens.commands import trace as trace_command
from backlens.conf import DEFAULT_MODEL
from backlens.errors import UserError

DESCRIPTION = """\
Backward Lens on your own prompt: project the gradient of -log p(target | prompt) into the
vocabulary, edit one fact and undo it, or trace where a fact is stored.

examples:
  backlens explain "Obama grew up in" " Paris"
  backlens explain "Obama grew up in" " Paris" --layers 20-29 --last --csv obama.csv --png obama.png
  backlens edit --method shift "The Eiffel Tower is located in" --subject "The Eiffel Tower" --target " Rome"
  backlens edit --method rome "{} is located in" --subject "The Eiffel Tower" --target " Rome" \\
      --prompt "The Eiffel Tower is in the city of"
  backlens trace "The Space Needle is in the city of" --subject "The Space Needle" --png needle.png

From the second command on, a resident server that has done the imports answers it
(backlens.commands.resident): `backlens server status|stop`; BACKLENS_SERVER=off runs every command
in its own process, as --verbose does.

models (--model): a model config name (backlens/conf/model/: smollm2-135m, tiny-gpt2, gpt2-xl, ...),
a local folder with a Hugging Face model, or a Hugging Face id (owner/name; needs the network
or the local cache).
"""

# Errors the user can act on: their messages name the problem and the fix.
USER_FAILURES = (UserError, ValueError, OSError, KeyError, RuntimeError)


def common_options() -> argparse.ArgumentParser:
    shared = argparse.ArgumentParser(add_help=False)
    group = shared.add_argument_group("model")
    group.add_argument("--model", default=DEFAULT_MODEL, help="config name, local folder or Hugging Face id "
                       "(default: %(default)s)")
    group.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: %(default)s)")
    group.add_argument("--dtype", default="float32", help="float32, bfloat16, ... (default: %(default)s)")
    group.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    group.add_argument("--verbose", "-v", action="store_true",
                       help="show loading progress (GGUF de-quantisation), logs and tracebacks")
    return shared


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backlens", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="{explain,edit,trace}", required=True)
    shared = common_options()
    for module in (explain_command, edit_command, trace_command):
        module.add_parser(commands, shared)
    return parser


def one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    if isinstance(error, KeyError) and text.startswith("'"):
        text = f"missing key {text}"
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the exit status (0, or 1 after a one-line error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except USER_FAILURES as error:
        if args.verbose and not isinstance(error, UserError):
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
