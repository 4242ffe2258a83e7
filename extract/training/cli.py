"""``poselift-extract train CONFIG``: the argument parser and entry of the 2D estimator training."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

__all__ = ["TRAIN_HELP", "TRAIN_DESCRIPTION", "add_train_arguments", "run_train"]


TRAIN_HELP = "train a 2D keypoint estimator from a YAML config"
TRAIN_DESCRIPTION = ("Train SIKR/FastPose, SimCC or FAMI-Pose as a YAML config describes "
                     "(configs/pose2d/). Re-running with the same --out resumes from last.pt. "
                     "Under torchrun every rank runs this command (DDP).")


def add_train_arguments(t: argparse.ArgumentParser) -> None:
    """The options of ``poselift-extract train``."""
    t.add_argument("config", help="YAML training config")
    t.add_argument("--out", help="output folder (default: the config's 'out', else runs/<config name>)")
    t.add_argument("--epochs", type=int, help="override train.epochs")
    t.add_argument("--device", help="override train.device (auto, cpu, cuda)")
    t.add_argument("--workers", type=int, help="override data.workers (DataLoader decode workers)")


def run_train(a: argparse.Namespace) -> int:
    from .loop import load_config, train

    cfg = load_config(a.config)
    tc = cfg.setdefault("train", {})
    if a.epochs is not None:
        tc["epochs"] = a.epochs
    if a.device:
        tc["device"] = a.device
    if a.workers is not None:
        cfg["data"]["workers"] = a.workers
    out = Path(a.out) if a.out else Path(cfg["out"]) if cfg.get("out") else Path("runs") / Path(a.config).stem
    logging.getLogger("poselift.extract.training").setLevel(logging.INFO)
    hist = train(cfg, out, log_fn=print)
    best = max((v["AP"] for v in hist["val"]), default=None)
    print(f"{out}: {len(hist['loss'])} epochs, last loss {hist['loss'][-1]:.5f}"
          + (f", best val AP {best:.4f}" if best is not None else ""))
    return 0
