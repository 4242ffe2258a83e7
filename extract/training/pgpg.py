"""AlphaPose's part-guided proposal generator (PGPG): jitter training boxes the way a detector's
boxes differ from the ground truth, conditioned on the pose's atomic pose class.

* Atomic poses: every annotated pose is normalised to its GT box (centre at 0, coordinates
  divided by the box's longer side, invisible joints at 0) and clustered with k-means; the
  cluster centres are the atomic poses.
* Offsets: for a GT box ``(x0, y0, x1, y1)`` of width w and height h and the detector box
  matched to it, ``((dx0, dx1) / w, (dy0, dy1) / h)``; per atomic class a Gaussian (mean, std per
  coordinate) is fitted. Without detector boxes every class gets AlphaPose's published global
  distribution (``ALPHAPOSE_OFFSETS``).
* Sampling: classify the pose, draw the four offsets from its class, move the box; with
  probability ``subpatch_p`` (0.15 in AlphaPose) a random sub-patch of the box is taken instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ALPHAPOSE_OFFSETS", "normalise_poses", "kmeans", "box_offsets", "match_detections", "PGPG"]

# (mean, std) of x0/w, y0/h, x1/w, y1/h offsets (AlphaPose's DPG, estimators2d.md §2.2).
ALPHAPOSE_OFFSETS = np.array([[-0.0142, 0.1158], [0.0043, 0.068], [0.0154, 0.1337], [-0.0013, 0.0711]])


def normalise_poses(kps: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, K, 3) keypoints and (N, 4) xyxy boxes -> (N, 2K) box-normalised poses (invisible = 0)."""
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])[:, None, None]
    p = (kps[:, :, :2] - c[:, None]) / np.maximum(side, 1e-6)
    p[kps[:, :, 2] <= 0] = 0.0
    return p.reshape(len(kps), -1)


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding: (centres (k, D), labels (N,))."""
    rng = np.random.default_rng(seed)
    k = min(k, len(x))
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.min(((x[:, None] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(len(x))])
    c = np.asarray(centres, float)
    labels = np.zeros(len(x), int)
    for _ in range(iters):
        labels = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        new = np.array([x[labels == i].mean(0) if np.any(labels == i) else c[i] for i in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return c, labels


def box_offsets(gt: np.ndarray, det: np.ndarray) -> np.ndarray:
    """(N, 4) xyxy GT and detector boxes -> (N, 4) offsets relative to GT width / height."""
    w = (gt[:, 2] - gt[:, 0])[:, None]
    h = (gt[:, 3] - gt[:, 1])[:, None]
    return (det - gt) / np.concatenate([w, h, w, h], axis=1)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU (N, M) of xyxy boxes a (N, 4) and b (M, 4)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def match_detections(gt_boxes: np.ndarray, gt_image_ids: list, detections: list[dict],
                     min_iou: float = 0.5, min_score: float = 0.0) -> np.ndarray:
    """For each GT box (N, 4) xyxy, the best-IoU detector box of the same image ((N, 4) xyxy,
    NaN rows where none reaches ``min_iou``). ``detections``: COCO detection results
    (``image_id``, ``bbox`` [x, y, w, h], ``score``)."""
    by_img: dict = {}
    for n, d in enumerate(detections):
        if "image_id" not in d or "bbox" not in d:
            raise ValueError(f"detections[{n}]: needs 'image_id' and 'bbox'")
        if d.get("score", 1.0) >= min_score and d.get("category_id", 1) == 1:
            x, y, w, h = d["bbox"]
            by_img.setdefault(d["image_id"], []).append([x, y, x + w, y + h])
    out = np.full((len(gt_boxes), 4), np.nan)
    for i, (box, iid) in enumerate(zip(gt_boxes, gt_image_ids)):
        cand = np.asarray(by_img.get(iid, []), float).reshape(-1, 4)
        if len(cand):
            iou = _iou(box[None], cand)[0]
            if iou.max() >= min_iou:
                out[i] = cand[iou.argmax()]
    return out


@dataclass
class PGPG:
    """Fitted atomic poses and per-class offset Gaussians (``mean``/``std`` (C, 4))."""

    centres: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    subpatch_p: float = 0.15
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, int))

    @classmethod
    def fit(cls, kps: np.ndarray, gt_boxes: np.ndarray, det_boxes: np.ndarray | None = None,
            num_classes: int = 8, seed: int = 0, subpatch_p: float = 0.15, min_count: int = 5) -> "PGPG":
        """Fit from (N, K, 3) GT poses, (N, 4) GT boxes and optionally their matched (N, 4)
        detector boxes (rows of NaN where a GT has no detection). Classes with fewer than
        ``min_count`` offsets fall back to the offsets of all samples."""
        centres, labels = kmeans(normalise_poses(kps, gt_boxes), num_classes, seed)
        c = len(centres)
        if det_boxes is None:
            mean = np.repeat(ALPHAPOSE_OFFSETS[None, :, 0], c, 0)
            std = np.repeat(ALPHAPOSE_OFFSETS[None, :, 1], c, 0)
            return cls(centres, mean, std, subpatch_p, np.bincount(labels, minlength=c))
        off = box_offsets(gt_boxes, det_boxes)
        ok = np.isfinite(off).all(1)
        if ok.sum() < 2:
            raise ValueError(f"PGPG: only {int(ok.sum())} GT boxes have a matched detector box")
        g_mean, g_std = off[ok].mean(0), off[ok].std(0)
        mean, std, counts = np.empty((c, 4)), np.empty((c, 4)), np.zeros(c, int)
        for i in range(c):
            sel = ok & (labels == i)
            counts[i] = sel.sum()
            mean[i], std[i] = (off[sel].mean(0), off[sel].std(0)) if sel.sum() >= min_count else (g_mean, g_std)
        return cls(centres, mean, std, subpatch_p, counts)

    def classify(self, kps: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Atomic pose class (N,) of (N, K, 3) poses in (N, 4) boxes."""
        p = normalise_poses(kps, boxes)
        return ((p[:, None] - self.centres[None]) ** 2).sum(-1).argmin(1)

    def sample(self, box: np.ndarray, kps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A jittered xyxy box for one GT box (4,) and pose (K, 3); the result keeps positive size."""
        box = np.asarray(box, float)
        w, h = box[2] - box[0], box[3] - box[1]
        if rng.random() < self.subpatch_p:
            # a random sub-patch: at least half of each side, anywhere inside the box
            sw, sh = w * rng.uniform(0.5, 1.0), h * rng.uniform(0.5, 1.0)
            x0, y0 = box[0] + rng.uniform(0, w - sw), box[1] + rng.uniform(0, h - sh)
            return np.array([x0, y0, x0 + sw, y0 + sh])
        c = int(self.classify(kps[None], box[None])[0])
        off = rng.normal(self.mean[c], self.std[c]) * np.array([w, h, w, h])
        out = box + off
        if out[2] - out[0] < 0.1 * w or out[3] - out[1] < 0.1 * h:
            return box  # a draw that collapses the box is not a plausible detection
        return out
