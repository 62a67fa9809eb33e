"""The model a command runs on, loaded the same way by ``explain``, ``edit`` and ``trace`` (apart from
``commands.main``, which imports those three: the commands import this module, not main)."""

from __future__ import annotations

import argparse
import sys
import time


def load_for(args: argparse.Namespace):
    """The model of ``--model``, loaded quietly unless --verbose; prints the load time."""
    # Imported here: ``backlens --help`` and a bad argument answer without loading torch.
    from backlens.api.models import load

    started = time.perf_counter()
    loaded = load(args.model, device=args.device, dtype=args.dtype, verbose=args.verbose)
    print(f"{loaded.name}: loaded in {time.perf_counter() - started:.1f} s ({loaded.source})", file=sys.stderr)
    return loaded
