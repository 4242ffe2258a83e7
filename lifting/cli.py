"""``poselift-train``: train lifters from caches.

Subcommands live in their family's ``cli`` module (``videopose3d.cli``: temporal convolutions;
``tcmr.cli``: TCMR/VIBE) and register themselves in ``COMMANDS``.
"""
from __future__ import annotations

from typing import Sequence

from poselift.core.cli import Command, run_subcommands

from .tcmr import cli as tcmr_cli
from .videopose3d import cli as lift_cli

# name -> (add_arguments(parser), run(args) -> exit code, one-line help)
COMMANDS: dict[str, Command] = {
    "lift": (lift_cli.add_train_arguments, lift_cli.run_train,
             "train a VideoPose3D-style temporal-convolution lifter (2D keypoints -> 3D joints)"),
    "tcmr": (tcmr_cli.add_train_arguments, tcmr_cli.run_train,
             "train TCMR from feature caches (HMR features -> SMPL, middle frame of 16)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_subcommands("poselift-train", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
