"""``poselift-import``: convert other projects' data files into poselift caches.

Example (Human3.6M, ground truth plus two 2D sources)::

    poselift-import videopose3d --dataset h36m --data-3d data/data_3d_h36m.npz \\
        --data-2d data/data_2d_h36m_gt.npz --data-2d data/data_2d_h36m_cpn_ft_h36m_dbb.npz \\
        --out caches/h36m
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from poselift.core.cli import Command, run_parsed
from poselift.core.cli import build_parser as build_subcommand_parser

from . import tcmr_import_cli
from .videopose3d import DATASETS, LAYOUTS, import_videopose3d

__all__ = ["main", "build_parser"]


_DESCRIPTION = "Import datasets prepared by other projects into poselift HDF5 caches."


def _add_videopose3d(v: argparse.ArgumentParser) -> None:
    v.add_argument("--dataset", required=True, choices=sorted(DATASETS),
                   help="h36m (Human3.6M, 4 cameras, 50 fps), humaneva15 (HumanEva-I, 15 joints, "
                        "3 cameras, 60 fps) or custom (in-the-wild 2D only: one subject per video, "
                        "action 'custom', 1 camera, image size from the file's video_metadata)")
    v.add_argument("--data-3d", metavar="NPZ",
                   help="data_3d_<dataset>.npz with positions_3d {subject: {action: (T, J, 3) "
                        "world metres}}; required for h36m/humaneva15, not allowed for custom")
    v.add_argument("--data-2d", metavar="NPZ", action="append", default=[],
                   help="data_2d_<dataset>_<source>.npz with positions_2d and metadata; repeat "
                        "for several 2D sources, each becomes its own cache named after <source>")
    v.add_argument("--out", required=True, metavar="DIR",
                   help="output folder for the caches (created if missing)")
    v.add_argument("--joint-set", metavar="NAME",
                   help="the 2D layout you expect (e.g. h36m17, coco17, humaneva15, mpii16); a 2D "
                        "file with another layout is refused. Also names the layout of files whose "
                        f"metadata lacks layout_name. Layout names map as {LAYOUTS}")
    v.add_argument("--only-2d", choices=("error", "keep", "skip"), default="error",
                   help="what to do with 2D subject/action pairs that have no 3D: 'error' "
                        "(default) stops; 'keep' imports them as 2D-only sequences (HumanEva's "
                        "Unlabeled/* subjects, for semi-supervised training); 'skip' leaves "
                        "them out. Sequences with 3D but no 2D are always an error")
    v.add_argument("--trust-pickle", action="store_true",
                   help="unpickle the npz members without restrictions. The default loader only "
                        "rebuilds dicts, lists, numpy arrays and scalars and refuses anything "
                        "else, because a crafted pickle can run code; use this only for files "
                        "you made yourself")
    v.add_argument("--overwrite", action="store_true",
                   help="delete existing caches (and leftovers of an interrupted run) with the "
                        "same names in --out instead of resuming or refusing them")


def _run_videopose3d(args: argparse.Namespace) -> int:
    report = import_videopose3d(args.data_3d, args.data_2d, args.dataset, args.out,
                                joint_set=args.joint_set, only_in_2d=args.only_2d,
                                trust_pickle=args.trust_pickle, overwrite=args.overwrite)
    print(report.summary())
    return 0


COMMANDS: dict[str, Command] = {
    "videopose3d": (_add_videopose3d, _run_videopose3d,
                    "VideoPose3D data_3d_<dataset>.npz / data_2d_<dataset>_<source>.npz files",
                    {"formatter_class": argparse.RawDescriptionHelpFormatter, "description": (
            "Convert VideoPose3D files into caches in --out:\n"
            "  <dataset>_3d.h5        kind 'gt': joints_3d (camera frame, metres, absolute) and\n"
            "                         joints_3d_world, one sequence per subject/action/camera\n"
            "  <dataset>_<source>.h5  kind 'keypoints2d', one per --data-2d file: pixel keypoints\n"
            "                         truncated to the mocap length, same sequence ids\n"
            "Sequence ids are '<subject>/<action>/<camera>' (Human3.6M camera ids such as\n"
            "54138969; 'cam0'.. for HumanEva-I and custom). Human3.6M keeps 17 of the 32 mocap\n"
            "joints and drops S11 'Directions' (corrupt). Re-running resumes an interrupted\n"
            "import; changed input files are refused unless --overwrite.")}),
    "tcmr": (tcmr_import_cli.add_arguments, tcmr_import_cli.run,
             "TCMR/VIBE joblib databases, InstaVariety HDF5 or 3DPW sequence files -> caches",
             {"description": "Import a TCMR/VIBE *_db.pt (joblib), insta_train_db.h5 or 3DPW "
                             "sequenceFiles into a features cache plus a ground-truth (or 2D "
                             "keypoint) cache, video by video"}),
}


def build_parser() -> argparse.ArgumentParser:
    return build_subcommand_parser("poselift-import", _DESCRIPTION, COMMANDS, metavar="COMMAND")


def main(argv: Sequence[str] | None = None) -> int:
    return run_parsed("poselift-import", build_parser().parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
