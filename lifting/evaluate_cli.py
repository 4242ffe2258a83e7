"""``poselift-evaluate``: evaluate checkpoints on caches, or recompute reports from saved
predictions.

Subcommands: ``lifter`` (temporal-convolution checkpoint + caches), ``predictions``
(a predictions.npz written by any poselift evaluation; no model needed); further model
families register in ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from . import lift_cli, tcmr_cli

COMMANDS: dict[str, tuple[Callable, Callable, str]] = {
    "lifter": (lift_cli.add_eval_arguments, lift_cli.run_eval,
               "evaluate a temporal-convolution lifter checkpoint on caches (P1/P2/P3/MPJVE per action)"),
    "tcmr": (tcmr_cli.add_eval_arguments, tcmr_cli.run_eval,
             "evaluate a TCMR checkpoint (poselift or released .pth.tar) with the 3DPW/MPI-INF-3DHP/H36M protocol"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "predictions":
        from poselift.evaluation.cli import main as predictions_main

        return predictions_main(argv[1:])
    p = argparse.ArgumentParser(prog="poselift-evaluate", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, (add, _, help_) in COMMANDS.items():
        add(sub.add_parser(name, help=help_, description=help_))
    sub.add_parser("predictions", help="report from a predictions.npz (see `poselift-evaluate predictions --help`)",
                   add_help=False)
    args = p.parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except (KeyError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"poselift-evaluate {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
