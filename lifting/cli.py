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


def run_subcommands(prog: str, description: str, commands: dict[str, tuple[Callable, Callable, str]],
                    argv: Sequence[str] | None, extra: Callable[[argparse._SubParsersAction], None] | None = None
                    ) -> int:
    """Parse ``argv`` into one of ``commands`` and run it; known input errors become one
    ``error:`` line naming the command (exit 2) instead of a traceback."""
    from poselift.datasets.cache import CacheError

    from .checkpoint import CheckpointError

    p = argparse.ArgumentParser(prog=prog, description=description)
    sub = p.add_subparsers(dest="command", required=True)
    for name, (add, _, help_) in commands.items():
        add(sub.add_parser(name, help=help_, description=help_))
    if extra is not None:
        extra(sub)
    args = p.parse_args(argv)
    try:
        return commands[args.command][1](args)
    except (KeyError, ValueError, FileNotFoundError, RuntimeError, CacheError, CheckpointError) as e:
        print(f"{prog} {args.command}: error: {e}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    return run_subcommands("poselift-train", " ".join(__doc__.split("\n\n")[0].split()), COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
