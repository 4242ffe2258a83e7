"""``poselift-evaluate keypoints``: COCO keypoint AP/AR or PoseTrack mAP of 2D keypoint results.

Writes ``keypoints_eval.json``, ``keypoints_eval.md`` and ``keypoints_per_joint.png`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from poselift.datasets.joints import COCO17, HALPE26, HALPE136

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gt", required=True, help="GT annotations: COCO/Halpe keypoints JSON or PoseTrack18/21 JSON")
    p.add_argument("--pred", required=True, help="results JSON (AlphaPose/COCO result list)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--protocol", choices=["coco", "posetrack"], default="coco",
                   help="coco: the ten COCO AP/AR numbers (OKS sigmas from the keypoint count: COCO-17, "
                        "Halpe-26/136); posetrack: PCKh mAP per joint (default: coco)")


def _joint_names(k: int) -> tuple[str, ...]:
    return {17: COCO17.names, 26: HALPE26.names, 136: HALPE136.names}.get(k, tuple(str(i) for i in range(k)))


def _plot(names: list[str], values: list[float], ylabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * len(names)), 3.5))
    ax.bar(range(len(names)), values)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(a: argparse.Namespace) -> int:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for f in (a.gt, a.pred):
        if not Path(f).is_file():
            raise FileNotFoundError(f"no such file: {f}")
    if a.protocol == "coco":
        from .keypoints2d import evaluate_keypoints

        ev = evaluate_keypoints(a.gt, a.pred)
        names = list(_joint_names(len(ev.per_joint)))
        per = {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, ev.per_joint)}
        res = {"protocol": "coco", "stats": ev.stats, "per_joint_similarity": per,
               "num_images": ev.num_images, "num_gt": ev.num_gt, "num_results": ev.num_results}
        md = ["| " + " | ".join(ev.stats) + " |", "|" + "---|" * len(ev.stats),
              "| " + " | ".join(f"{v:.3f}" for v in ev.stats.values()) + " |"]
        _plot(names, [0.0 if v is None else v for v in per.values()],
              "mean keypoint similarity (OKS>=0.5 matches)", out / "keypoints_per_joint.png")
    else:
        from .posetrack import posetrack_map

        res = {"protocol": "posetrack", **posetrack_map(a.gt, a.pred)}
        cols = list(res["groups"]) + ["total"]
        md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
              "| " + " | ".join(f"{v:.1f}" for v in [*res["groups"].values(), res["total"]]) + " |"]
        _plot(list(res["per_joint"]), list(res["per_joint"].values()), "AP (PCKh@0.5)",
              out / "keypoints_per_joint.png")
    (out / "keypoints_eval.json").write_text(json.dumps(res, indent=2))
    (out / "keypoints_eval.md").write_text(
        f"# Keypoint evaluation ({a.protocol})\n\nGT: `{a.gt}`, results: `{a.pred}`\n\n" + "\n".join(md) + "\n")
    print("\n".join(md))
    return 0
