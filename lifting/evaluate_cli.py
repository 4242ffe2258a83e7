"""``poselift-evaluate``: evaluate checkpoints on caches, or recompute reports from saved
predictions.

Subcommands: ``lifter`` (temporal-convolution checkpoint + caches), ``tcmr`` (TCMR/VIBE
checkpoint + caches), ``predictions`` (a predictions.npz written by any poselift evaluation;
no model needed); further model families register in ``COMMANDS``.
"""
from __future__ import annotations

from typing import Sequence

from poselift.core.cli import Command, run_subcommands
from poselift.evaluation import cli as predictions_cli
from poselift.evaluation import keypoints_cli

from .tcmr import cli as tcmr_cli
from .videopose3d import cli as lift_cli

COMMANDS: dict[str, Command] = {
    "lifter": (lift_cli.add_eval_arguments, lift_cli.run_eval,
               "evaluate a temporal-convolution lifter checkpoint on caches (P1/P2/P3/MPJVE per action)"),
    "tcmr": (tcmr_cli.add_eval_arguments, tcmr_cli.run_eval,
             "evaluate a TCMR checkpoint (poselift or released .pth.tar) with the 3DPW/MPI-INF-3DHP/H36M protocol"),
    "keypoints": (keypoints_cli.add_arguments, keypoints_cli.run,
                  "2D keypoint results vs GT: COCO AP/AR (OKS) or PoseTrack mAP (PCKh) -> JSON, markdown, plot"),
    "predictions": (predictions_cli.add_arguments, predictions_cli.run,
                    "metrics, grouped report and plots from a predictions.npz (no model needed)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_subcommands("poselift-evaluate", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
