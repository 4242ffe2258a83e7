"""PoseTrack multi-person pose mAP per joint (the ``poseval`` protocol), from PCKh matches.

* A predicted joint matches a GT joint when their distance is at most 0.5 x the head size,
  head size = 0.6 x the diagonal of the GT person's ``bbox_head`` ([x, y, w, h]).
* Per labelled frame, predicted and GT persons are paired one-to-one (Hungarian) by the
  fraction of the GT's visible joints the prediction matches.
* Per joint, every predicted person contributes its joint with its keypoint score: a true
  positive when its paired GT has the joint visible and within the threshold, otherwise a false
  positive. The number of positives is the count of visible GT joints. AP is the VOC
  all-points area under the precision envelope.
* Predicted joints inside an image's ignore regions (``ignore_regions_x``/``_y``) are removed,
  and persons left without joints, as poseval does with predictions.
* Groups: head (nose, head bottom, head top), then left/right pairs of shoulders, elbows,
  wrists, hips, knees, ankles; ``total`` is the mean over the joints that have GT (PoseTrack
  leaves the ears unlabelled, so they drop out).

GT: PoseTrack18/21 JSON (``images`` with ``id``/``is_labeled``, ``annotations`` with
``image_id``, ``keypoints`` (17 x 3), ``bbox_head``). Predictions: AlphaPose result list with
``image_id`` (the GT image id or its ``file_name``), ``keypoints`` [x, y, score, ...].
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from poselift.datasets.joints import POSETRACK17

__all__ = ["PCKH_THRESHOLD", "GROUPS", "voc_ap", "posetrack_map"]

PCKH_THRESHOLD = 0.5
GROUPS: dict[str, tuple[str, ...]] = {
    "head": ("nose", "head_bottom", "head_top"), "shoulder": ("l_shoulder", "r_shoulder"),
    "elbow": ("l_elbow", "r_elbow"), "wrist": ("l_wrist", "r_wrist"), "hip": ("l_hip", "r_hip"),
    "knee": ("l_knee", "r_knee"), "ankle": ("l_ankle", "r_ankle"),
}


def voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """Area under the precision envelope at every recall change (VOC 2010+ / poseval)."""
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def _load(path_or_obj: Any) -> Any:
    return json.loads(Path(path_or_obj).read_text()) if isinstance(path_or_obj, (str, Path)) else path_or_obj


def _ignore_regions(im: dict) -> list[np.ndarray]:
    """Polygons (P, 2) of an image's ``ignore_regions_x`` / ``ignore_regions_y``."""
    xs, ys = im.get("ignore_regions_x") or [], im.get("ignore_regions_y") or []
    return [np.stack([np.asarray(x, float), np.asarray(y, float)], 1) for x, y in zip(xs, ys) if len(x) >= 3]


def _drop_ignored(kp: np.ndarray, polys: list[np.ndarray]) -> np.ndarray:
    """Predicted joints inside an ignore region become NaN (they are neither TP nor FP)."""
    from matplotlib.path import Path as Polygon

    kp = kp.copy()
    for poly in polys:
        inside = Polygon(poly).contains_points(kp[:, :2])
        kp[inside, :2] = np.nan
    return kp


def _frames(gt: dict, src: str) -> tuple[dict, dict, dict]:
    """{image id: [(kps (17, 3), head size)]} for labelled frames, {file_name: id} and
    {image id: ignore polygons}."""
    if "images" not in gt or "annotations" not in gt:
        raise ValueError(f"{src}: a PoseTrack JSON needs 'images' and 'annotations'")
    labelled = {im["id"]: [] for im in gt["images"] if im.get("is_labeled", True)}
    ignore = {im["id"]: _ignore_regions(im) for im in gt["images"]}
    names = {im.get("file_name"): im["id"] for im in gt["images"]}
    for n, a in enumerate(gt["annotations"]):
        if a.get("image_id") not in labelled:
            continue
        kp = np.asarray(a.get("keypoints", []), float)
        if kp.size != 51:
            raise ValueError(f"{src} annotations[{n}]: 'keypoints' must hold 17 x 3 numbers, got {kp.size}")
        hb = a.get("bbox_head")
        if hb is None or len(hb) != 4:
            raise ValueError(f"{src} annotations[{n}] (image {a['image_id']}): missing field 'bbox_head'")
        size = 0.6 * float(np.hypot(hb[2], hb[3]))
        labelled[a["image_id"]].append((kp.reshape(17, 3), size))
    return labelled, names, ignore


def posetrack_map(gt: str | Path | dict, pred: str | Path | list) -> dict[str, Any]:
    """mAP per joint and per group (percent). Returns {"per_joint": {name: AP}, "groups":
    {group: AP}, "total": mAP, "num_gt": {name: count}}."""
    src = str(gt) if isinstance(gt, (str, Path)) else "GT"
    frames, names, ignore = _frames(_load(gt), src)
    preds: dict[Any, list[np.ndarray]] = {}
    for n, r in enumerate(_load(pred)):
        iid = r.get("image_id")
        iid = names.get(iid, iid)
        kp = np.asarray(r.get("keypoints", []), float)
        if kp.size != 51:
            raise ValueError(f"predictions[{n}]: 'keypoints' must hold 17 x 3 numbers, got {kp.size}")
        if iid in frames:
            kp = _drop_ignored(kp.reshape(17, 3), ignore.get(iid, []))
            if np.isfinite(kp[:, :2]).any():  # a person wholly inside ignore regions is dropped
                preds.setdefault(iid, []).append(kp)
    k = 17
    scores: list[list[float]] = [[] for _ in range(k)]
    hits: list[list[bool]] = [[] for _ in range(k)]
    npos = np.zeros(k, int)
    for iid, gts in frames.items():
        ps = preds.get(iid, [])
        vis = np.array([g[0][:, 2] > 0 for g in gts], bool).reshape(len(gts), k)
        npos += vis.sum(0)
        match = np.zeros((len(ps), len(gts), k), bool)
        for i, p in enumerate(ps):
            for j, (g, size) in enumerate(gts):
                d = np.linalg.norm(p[:, :2] - g[:, :2], axis=1) / max(size, np.spacing(1))
                match[i, j] = vis[j] & (d <= PCKH_THRESHOLD)
        pair = -np.ones(len(ps), int)
        if ps and gts:
            frac = match.sum(2) / np.maximum(vis.sum(1), 1)[None]
            rows, cols = linear_sum_assignment(-frac)
            pair[rows] = cols
        for i, p in enumerate(ps):
            for jt in range(k):
                if not np.isfinite(p[jt, :2]).all():
                    continue
                scores[jt].append(float(p[jt, 2]))
                hits[jt].append(bool(pair[i] >= 0 and match[i, pair[i], jt]))
    per_joint: dict[str, float] = {}
    for jt, name in enumerate(POSETRACK17.names):
        if npos[jt] == 0:
            continue
        order = np.argsort(-np.asarray(scores[jt]), kind="mergesort")
        h = np.asarray(hits[jt], bool)[order] if order.size else np.zeros(0, bool)
        tp, fp = np.cumsum(h), np.cumsum(~h)
        rec = tp / npos[jt]
        prec = tp / np.maximum(tp + fp, np.spacing(1))
        per_joint[name] = 100.0 * voc_ap(rec, prec)
    groups = {g: float(np.mean([per_joint[n] for n in js if n in per_joint]))
              for g, js in GROUPS.items() if any(n in per_joint for n in js)}
    total = float(np.mean(list(per_joint.values()))) if per_joint else float("nan")
    return {"per_joint": per_joint, "groups": groups, "total": total,
            "num_gt": {n: int(c) for n, c in zip(POSETRACK17.names, npos)}}
