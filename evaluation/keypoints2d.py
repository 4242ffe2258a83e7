"""COCO keypoint AP/AR in numpy, numerically the same as ``pycocotools``' ``COCOeval`` (iouType
``keypoints``); ``tests/test_keypoints_eval.py`` compares the ten numbers with the library.

What COCOeval does, and this module repeats:

* OKS between a detection and a ground truth: ``e_i = d_i^2 / (2 * area * (2 sigma_i)^2)`` over
  the GT's labelled joints (v > 0), ``OKS = mean(exp(-e_i))``. A GT without labelled joints
  measures the detection's distance to a box twice the GT box's size instead.
* GT ``ignore`` = ``iscrowd`` or ``num_keypoints == 0``; GTs outside the area range are also
  ignored. Detections are sorted by score (stable) and the top 20 per image are kept.
* Greedy matching per OKS threshold (0.50:0.05:0.95): each detection takes the best-OKS unmatched
  GT, preferring non-ignored GTs; a detection matched to an ignored GT, or unmatched with its
  area (keypoint-extent box) outside the range, is ignored.
* Precision at 101 recall points with the precision envelope; AP = mean over thresholds and
  recall points, AR = mean recall at the last detection.

Results use AlphaPose's / COCO's result layout: ``{"image_id", "category_id", "keypoints":
[x, y, s, ...], "score"}``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["COCO_SIGMAS", "HALPE26_SIGMAS", "HALPE136_SIGMAS", "sigmas_for", "STAT_NAMES",
           "computeoks", "KeypointEval", "evaluate_keypoints", "load_gt", "load_results"]

# Official COCO per-keypoint sigmas (cocoapi cocoeval.py).
COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07,
                        .87, .87, .89, .89]) / 10.0
# Halpe: COCO's 17, then head, neck, hip (halpecocotools), feet 0.079; face and hands 0.025.
HALPE26_SIGMAS = np.concatenate([COCO_SIGMAS, [.026, .026, .066], [.079] * 6])
HALPE136_SIGMAS = np.concatenate([HALPE26_SIGMAS, [.025] * 110])
STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
AREA_RANGES = {"all": (0.0, 1e10), "medium": (32.0 ** 2, 96.0 ** 2), "large": (96.0 ** 2, 1e10)}
OKS_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETS = 20


def sigmas_for(num_joints: int) -> np.ndarray:
    """Per-joint OKS sigmas for 17 (COCO), 26 (Halpe-26) or 136 (Halpe-136) keypoints."""
    table = {17: COCO_SIGMAS, 26: HALPE26_SIGMAS, 136: HALPE136_SIGMAS}
    if num_joints not in table:
        raise ValueError(f"no OKS sigmas known for {num_joints} keypoints (known: 17, 26, 136)")
    return table[num_joints]


def computeoks(dt_kps: np.ndarray, gt_kps: np.ndarray, gt_boxes: np.ndarray, gt_areas: np.ndarray,
               sigmas: np.ndarray) -> np.ndarray:
    """OKS matrix (D, G) for detections (D, K, 3) and GTs (G, K, 3), GT boxes (G, 4) xywh,
    GT areas (G,). Detection scores (column 2) are not used."""
    d, g = len(dt_kps), len(gt_kps)
    out = np.zeros((d, g))
    if d == 0 or g == 0:
        return out
    var = (2 * sigmas) ** 2
    for j in range(g):
        xg, yg, vg = gt_kps[j, :, 0], gt_kps[j, :, 1], gt_kps[j, :, 2]
        k1 = np.count_nonzero(vg > 0)
        bb = gt_boxes[j]
        x0, x1 = bb[0] - bb[2], bb[0] + bb[2] * 2
        y0, y1 = bb[1] - bb[3], bb[1] + bb[3] * 2
        for i in range(d):
            xd, yd = dt_kps[i, :, 0], dt_kps[i, :, 1]
            if k1 > 0:
                dx, dy = xd - xg, yd - yg
            else:  # no labelled joint: distance to a box twice the GT box (COCOeval)
                z = np.zeros_like(xd)
                dx = np.maximum(z, x0 - xd) + np.maximum(z, xd - x1)
                dy = np.maximum(z, y0 - yd) + np.maximum(z, yd - y1)
            e = (dx ** 2 + dy ** 2) / var / (gt_areas[j] + np.spacing(1)) / 2
            if k1 > 0:
                e = e[vg > 0]
            out[i, j] = np.sum(np.exp(-e)) / e.shape[0]
    return out


@dataclass
class _Image:
    gt_kps: np.ndarray      # (G, K, 3)
    gt_boxes: np.ndarray    # (G, 4) xywh
    gt_areas: np.ndarray    # (G,)
    gt_ignore: np.ndarray   # (G,) bool: crowd or no keypoints
    gt_crowd: np.ndarray    # (G,) bool
    dt_kps: np.ndarray      # (D, K, 3), sorted by score, top MAX_DETS
    dt_scores: np.ndarray   # (D,)
    dt_areas: np.ndarray    # (D,)


def _need(obj: dict, key: str, where: str) -> Any:
    if key not in obj:
        raise ValueError(f"{where}: missing field {key!r}")
    return obj[key]


def load_gt(path_or_obj: str | Path | dict, category_id: int = 1
            ) -> tuple[list[Any], dict[Any, list[dict]], dict[str, Any]]:
    """COCO keypoints GT JSON -> (sorted image ids, {image id: [annotations of the category]},
    {file_name and its base name: image id}); the last lets results that name images by file
    (AlphaPose's ``"0.jpg"``) be matched."""
    src = str(path_or_obj) if not isinstance(path_or_obj, dict) else "GT"
    d = json.loads(Path(path_or_obj).read_text()) if not isinstance(path_or_obj, dict) else path_or_obj
    images = _need(d, "images", src)
    ids = sorted({_need(im, "id", f"{src} images[{i}]") for i, im in enumerate(images)})
    by_img: dict[Any, list[dict]] = {i: [] for i in ids}
    for n, a in enumerate(_need(d, "annotations", src)):
        where = f"{src} annotations[{n}]"
        for key in ("image_id", "keypoints", "bbox", "area"):
            _need(a, key, where)
        if a.get("category_id", category_id) != category_id:
            continue
        if a["image_id"] not in by_img:
            raise ValueError(f"{where}: image_id {a['image_id']!r} is not in 'images'")
        by_img[a["image_id"]].append(a)
    names = {}
    for im in images:
        if "file_name" in im:
            names[str(im["file_name"])] = im["id"]
            names.setdefault(Path(str(im["file_name"])).name, im["id"])
    return ids, by_img, names


def load_results(path_or_list: str | Path | list, category_id: int = 1) -> dict[Any, list[dict]]:
    """Result list (AlphaPose/COCO format) -> {image id: [results of the category]}."""
    src = str(path_or_list) if not isinstance(path_or_list, list) else "results"
    r = json.loads(Path(path_or_list).read_text()) if not isinstance(path_or_list, list) else path_or_list
    if not isinstance(r, list):
        raise ValueError(f"{src}: expected a JSON list of results, got {type(r).__name__}")
    out: dict[Any, list[dict]] = {}
    for n, a in enumerate(r):
        for key in ("image_id", "keypoints", "score"):
            _need(a, key, f"{src}[{n}]")
        if a.get("category_id", category_id) == category_id:
            out.setdefault(a["image_id"], []).append(a)
    return out


def _kps(flat: Sequence[float], k: int, where: str) -> np.ndarray:
    a = np.asarray(flat, dtype=np.float64)
    if a.size != 3 * k:
        raise ValueError(f"{where}: {a.size // 3} keypoints, expected {k}")
    return a.reshape(k, 3)


def _prepare(gt_ids: list, gts: dict, names: dict, dts: dict, k: int) -> list[_Image]:
    for key in [i for i in dts if i not in gts and isinstance(i, str) and i in names]:
        dts.setdefault(names[key], []).extend(dts.pop(key))
    unknown = [i for i in dts if i not in gts]
    if unknown:
        raise ValueError(f"results name image ids not in the GT: {unknown[:5]}")
    images = []
    for iid in gt_ids:
        g, d = gts[iid], dts.get(iid, [])
        gk = np.stack([_kps(a["keypoints"], k, f"GT image {iid}") for a in g]) if g else np.zeros((0, k, 3))
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in g], bool)
        nkp = np.array([a.get("num_keypoints", int(np.count_nonzero(gk[i, :, 2] > 0)))
                        for i, a in enumerate(g)])
        order = np.argsort([-float(a["score"]) for a in d], kind="mergesort")[:MAX_DETS]
        d = [d[i] for i in order]
        dk = np.stack([_kps(a["keypoints"], k, f"result for image {iid}") for a in d]) if d else np.zeros((0, k, 3))
        # Detection area = keypoint-extent box, as COCO.loadRes computes it.
        ext = (dk[:, :, 0].max(1) - dk[:, :, 0].min(1)) * (dk[:, :, 1].max(1) - dk[:, :, 1].min(1)) if d else np.zeros(0)
        images.append(_Image(gk, np.array([a["bbox"] for a in g], float).reshape(-1, 4),
                             np.array([a["area"] for a in g], float), crowd | (nkp == 0), crowd, dk,
                             np.array([float(a["score"]) for a in d]), ext))
    return images


def _evaluate_image(im: _Image, oks: np.ndarray, a_rng: tuple[float, float]) -> dict | None:
    """Matches of one image in one area range (COCOeval.evaluateImg)."""
    if len(im.gt_kps) == 0 and len(im.dt_kps) == 0:
        return None
    g_ig = im.gt_ignore | (im.gt_areas < a_rng[0]) | (im.gt_areas > a_rng[1])
    gind = np.argsort(g_ig, kind="mergesort")
    g_ig, crowd = g_ig[gind], im.gt_crowd[gind]
    ious = oks[:, gind]
    t_n, d_n, g_n = len(OKS_THRESHOLDS), len(im.dt_kps), len(gind)
    gtm = np.zeros((t_n, g_n), bool)
    dtm = np.zeros((t_n, d_n), bool)
    dt_ig = np.zeros((t_n, d_n), bool)
    for ti, t in enumerate(OKS_THRESHOLDS):
        for di in range(d_n):
            best, m = min(t, 1 - 1e-10), -1
            for gi in range(g_n):
                if gtm[ti, gi] and not crowd[gi]:
                    continue
                if m > -1 and not g_ig[m] and g_ig[gi]:
                    break  # the rest are ignored GTs; a real match was found
                if ious[di, gi] < best:
                    continue
                best, m = ious[di, gi], gi
            if m == -1:
                continue
            dt_ig[ti, di], dtm[ti, di], gtm[ti, m] = g_ig[m], True, True
    out_rng = (im.dt_areas < a_rng[0]) | (im.dt_areas > a_rng[1])
    dt_ig |= ~dtm & out_rng[None]
    return {"scores": im.dt_scores, "dtm": dtm, "dt_ig": dt_ig, "g_ig": g_ig}


def _accumulate(evals: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(precision (T, R), recall (T,)) with -1 where undefined (COCOeval.accumulate)."""
    t_n = len(OKS_THRESHOLDS)
    prec, rec = -np.ones((t_n, len(RECALL_POINTS))), -np.ones(t_n)
    if not evals:
        return prec, rec
    scores = np.concatenate([e["scores"] for e in evals])
    inds = np.argsort(-scores, kind="mergesort")
    dtm = np.concatenate([e["dtm"] for e in evals], axis=1)[:, inds]
    dt_ig = np.concatenate([e["dt_ig"] for e in evals], axis=1)[:, inds]
    npig = int(np.count_nonzero(~np.concatenate([e["g_ig"] for e in evals])))
    if npig == 0:
        return prec, rec
    tp = np.cumsum(dtm & ~dt_ig, axis=1).astype(float)
    fp = np.cumsum(~dtm & ~dt_ig, axis=1).astype(float)
    for ti in range(t_n):
        nd = tp.shape[1]
        rc = tp[ti] / npig
        pr = tp[ti] / (fp[ti] + tp[ti] + np.spacing(1))
        rec[ti] = rc[-1] if nd else 0
        pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope from the right
        q = np.zeros(len(RECALL_POINTS))
        ids = np.searchsorted(rc, RECALL_POINTS, side="left")
        ok = ids < nd
        q[ok] = pr[ids[ok]]
        prec[ti] = q
    return prec, rec


def _mean_defined(x: np.ndarray) -> float:
    x = x[x > -1]
    return float(np.mean(x)) if x.size else -1.0


@dataclass
class KeypointEval:
    """The ten COCO numbers plus per-joint similarity of OKS>=0.5 matches (all areas)."""

    stats: dict[str, float]
    per_joint: np.ndarray  # (K,) mean keypoint similarity exp(-e_i) over matched, labelled joints
    num_images: int
    num_gt: int
    num_results: int


def evaluate_keypoints(gt: str | Path | dict, results: str | Path | list,
                       sigmas: np.ndarray | None = None, category_id: int = 1) -> KeypointEval:
    """COCO keypoint evaluation of ``results`` against ``gt`` (files or parsed JSON)."""
    gt_ids, gts, names = load_gt(gt, category_id)
    dts = load_results(results, category_id)
    sample = next((a["keypoints"] for v in gts.values() for a in v), None)
    if sample is None:
        raise ValueError("GT holds no annotations of the person category")
    k = len(sample) // 3
    sig = sigmas_for(k) if sigmas is None else np.asarray(sigmas, float)
    if len(sig) != k:
        raise ValueError(f"{len(sig)} sigmas for {k} keypoints")
    images = _prepare(gt_ids, gts, names, dts, k)
    oks = [computeoks(im.dt_kps, im.gt_kps, im.gt_boxes, im.gt_areas, sig) for im in images]
    prec, rec = {}, {}
    for name, rng in AREA_RANGES.items():
        evals = [e for im, o in zip(images, oks) if (e := _evaluate_image(im, o, rng)) is not None]
        prec[name], rec[name] = _accumulate(evals)
    t50, t75 = 0, 5
    stats = {"AP": _mean_defined(prec["all"]), "AP50": _mean_defined(prec["all"][t50]),
             "AP75": _mean_defined(prec["all"][t75]), "APm": _mean_defined(prec["medium"]),
             "APl": _mean_defined(prec["large"]), "AR": _mean_defined(rec["all"]),
             "AR50": _mean_defined(rec["all"][t50:t50 + 1]), "AR75": _mean_defined(rec["all"][t75:t75 + 1]),
             "ARm": _mean_defined(rec["medium"]), "ARl": _mean_defined(rec["large"])}
    return KeypointEval(stats, _per_joint(images, oks, sig), len(images),
                        int(sum(len(im.gt_kps) for im in images)), int(sum(len(v) for v in dts.values())))


def _per_joint(images: list[_Image], oks: list[np.ndarray], sig: np.ndarray) -> np.ndarray:
    """Per joint: mean exp(-e) over one-to-one OKS>=0.5 matches (greedy by score), labelled joints."""
    k = len(sig)
    tot, cnt = np.zeros(k), np.zeros(k)
    var = (2 * sig) ** 2
    for im, o in zip(images, oks):
        used = im.gt_ignore.copy()
        for di in range(len(im.dt_kps)):
            cand = np.where(used, -1.0, o[di]) if o.size else np.zeros(0)
            if cand.size == 0 or cand.max() < 0.5:
                continue
            gi = int(cand.argmax())
            used[gi] = True
            vis = im.gt_kps[gi, :, 2] > 0
            d2 = ((im.dt_kps[di, :, :2] - im.gt_kps[gi, :, :2]) ** 2).sum(1)
            ks = np.exp(-d2 / var / (im.gt_areas[gi] + np.spacing(1)) / 2)
            tot[vis] += ks[vis]
            cnt[vis] += 1
    return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)
