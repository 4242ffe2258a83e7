"""Command-line front ends for temporal-convolution lifters (train and evaluate)."""
from __future__ import annotations

import argparse
import json

from poselift.core.checkpoints import add_trust_flag
from poselift.datasets.cache import CacheError

from ..config import LiftConfig, config_from_cli

__all__ = ["add_train_arguments", "run_train", "add_eval_arguments", "run_eval"]


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file of LiftConfig overrides (e.g. configs/lift/tcn-243f_cpn_h36m.yaml)")
    p.add_argument("--gt", help="ground-truth cache (kind 'gt', 3D joints); overrides gt_cache")
    p.add_argument("--keypoints", help="2D keypoint cache (kind 'keypoints2d'); overrides keypoints_cache")
    p.add_argument("--out-dir", help="output folder for config.yaml, checkpoints and summary.json")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any LiftConfig field, repeatable (e.g. --set epochs=80 --set architecture=3,3,3,3)")
    p.add_argument("--init", help="start weights: a released VideoPose3D .bin, a poselift lifter checkpoint "
                                  "or a zoo name; loaded strictly into the configured architecture, fresh "
                                  "optimizer (overrides init)")
    p.add_argument("--no-resume", action="store_true",
                   help="start from scratch even if OUT_DIR/last.pt exists (default: resume from it)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-sync-bn", action="store_true",
                   help="under torchrun: per-rank BatchNorm statistics instead of whole-batch ones "
                        "(default: synchronised, the single-process semantics)")


def run_train(a: argparse.Namespace) -> int:
    from .train import train_lifter

    cfg = config_from_cli(LiftConfig, a.config, a.set, {"gt_cache": a.gt, "keypoints_cache": a.keypoints,
                                                        "out_dir": a.out_dir, "init": a.init}, a.print_config)
    if cfg is None:
        return 0
    if not cfg.gt_cache or not cfg.keypoints_cache:
        raise ValueError("both a ground-truth cache (--gt) and a keypoint cache (--keypoints) are needed")
    try:
        summary = train_lifter(cfg, resume=not a.no_resume, sync_bn=not a.no_sync_bn)
    except CacheError as e:  # wrong dataset / joint layout / missing file: a user error
        raise ValueError(str(e)) from e
    last = summary["history"][-1] if summary["history"] else {}
    print(f"checkpoint: {summary['checkpoint']}  last epoch: {json.dumps(last)}")
    return 0


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="poselift lifter checkpoint (last.pt / epoch_N.pt), a released VideoPose3D .bin, "
                        "or a zoo name (see `poselift weights list`)")
    p.add_argument("--gt", required=True, help="ground-truth cache with the test sequences")
    p.add_argument("--keypoints", required=True, help="2D keypoint cache with the same sequence ids")
    p.add_argument("--subjects", default="",
                   help="comma-separated test subjects (default: the checkpoint's test_subjects; required for a .bin)")
    p.add_argument("--actions", default=None,
                   help="comma-separated action-name prefixes (default: the checkpoint's training filter)")
    p.add_argument("--out", required=True, help="output folder for report.json/.md, protocol.md, plots")
    p.add_argument("--no-flip", action="store_true",
                   help="disable flip test-time augmentation (default: the checkpoint's flip_test)")
    p.add_argument("--by-subject", action="store_true", default=None,
                   help="per-subject action tables, as HumanEva is reported (default: the checkpoint's "
                        "by_subject)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto"],
                   help="forward precision (default fp32, the reference numerics; bf16 = autocast, faster on "
                        "AVX512-BF16/AMX CPUs); recorded in report.json")
    p.add_argument("--check-fingerprints", action="store_true",
                   help="refuse caches whose content differs from the ones the checkpoint was trained on")
    g = p.add_argument_group("what a VideoPose3D .bin does not record (a poselift checkpoint records "
                             "them; repeating them is allowed, changing them is refused)")
    g.add_argument("--dataset", default=None, help="expected dataset of the caches (e.g. h36m, humaneva15)")
    g.add_argument("--joints-in", default=None, help="expected 2D joint set (e.g. h36m17, coco17)")
    g.add_argument("--joints-out", default=None, help="expected 3D joint set")
    g.add_argument("--causal", action="store_true", default=None,
                   help="causal model (same weights as symmetric ones; default: symmetric)")
    g.add_argument("--dense", action="store_true", default=None, help="dense (non-dilated) model")
    g.add_argument("--filter-widths", default=None,
                   help="comma-separated widths, only for layouts the weights leave ambiguous")
    add_trust_flag(g, "a released .bin")


def run_eval(a: argparse.Namespace) -> int:
    from .eval import evaluate_checkpoint

    try:
        report, paths = evaluate_checkpoint(
            a.checkpoint, a.gt, a.keypoints, [s for s in a.subjects.split(",") if s], a.out,
            actions=None if a.actions is None else [s for s in a.actions.split(",") if s],
            flip=False if a.no_flip else None, by_subject=a.by_subject, device=a.device,
            check_fingerprints=a.check_fingerprints, dataset=a.dataset, joints_in=a.joints_in,
            joints_out=a.joints_out, causal=a.causal, dense=a.dense,
            filter_widths=None if a.filter_widths is None else [int(w) for w in a.filter_widths.split(",")],
            trust_pickle=a.trust_checkpoint, precision=a.precision)
    except CacheError as e:
        raise ValueError(str(e)) from e
    print(open(paths["protocol"]).read())
    for k, v in paths.items():
        print(f"{k:<22} {v}")
    return 0
