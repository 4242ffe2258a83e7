"""``poselift-evaluate``: evaluate checkpoints on caches, or recompute reports from saved
predictions.

Subcommands: ``lifter`` (temporal-convolution checkpoint + caches), ``predictions``
(a predictions.npz written by any poselift evaluation; no model needed); further model
families register in ``COMMANDS``.
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence

from . import lift_cli, tcmr_cli
from .cli import run_subcommands
from poselift.evaluation import keypoints_cli as _kp

COMMANDS: dict[str, tuple[Callable, Callable, str]] = {
    "lifter": (lift_cli.add_eval_arguments, lift_cli.run_eval,
               "evaluate a temporal-convolution lifter checkpoint on caches (P1/P2/P3/MPJVE per action)"),
    "tcmr": (tcmr_cli.add_eval_arguments, tcmr_cli.run_eval,
             "evaluate a TCMR checkpoint (poselift or released .pth.tar) with the 3DPW/MPI-INF-3DHP/H36M protocol"),
    "keypoints": (_kp.add_arguments, _kp.run,
                  "2D keypoint results vs GT: COCO AP/AR (OKS) or PoseTrack mAP (PCKh) -> JSON, markdown, plot"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "predictions":
        from poselift.evaluation.cli import main as predictions_main

        return predictions_main(argv[1:])
    return run_subcommands(
        "poselift-evaluate", " ".join(__doc__.split("\n\n")[0].split()), COMMANDS, argv,
        extra=lambda sub: sub.add_parser(
            "predictions", add_help=False,
            help="report from a predictions.npz (see `poselift-evaluate predictions --help`)"))

if __name__ == "__main__":
    raise SystemExit(main())
