"""``poselift-train``: train lifters from caches.

Subcommands live in their own modules (``lift_cli``: temporal convolutions; ``tcmr_cli``:
TCMR/VIBE) and register themselves in ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from . import lift_cli, tcmr_cli

# name -> (add_arguments(parser), run(args) -> exit code, one-line help)
COMMANDS: dict[str, tuple[Callable, Callable, str]] = {
    "lift": (lift_cli.add_train_arguments, lift_cli.run_train,
             "train a VideoPose3D-style temporal-convolution lifter (2D keypoints -> 3D joints)"),
    "tcmr": (tcmr_cli.add_train_arguments, tcmr_cli.run_train,
             "train TCMR from feature caches (HMR features -> SMPL, middle frame of 16)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="poselift-train", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, (add, _, help_) in COMMANDS.items():
        add(sub.add_parser(name, help=help_, description=help_))
    args = p.parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except (KeyError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"poselift-train {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
