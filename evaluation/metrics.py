"""Pure pose metrics (numpy), one sequence at a time.

Conventions
-----------
* Shapes: T frames, J joints, V mesh vertices; poses are ``(T, J, 3)``.
* Units: every function returns the unit of its input (metres in -> metres out).
  Reports multiply by 1000 to print millimetres; nothing here rescales.
* Computation is done in float64 whatever the input dtype, so results do not depend
  on whether a caller passes float32 or float64 arrays (or CPU torch tensors).
* Masks: ``mask`` is boolean, either per frame ``(T,)`` or per joint ``(T, J)``.
  A per-joint mask averages each frame over its visible joints only. Per-frame
  metrics keep their full length ``(T,)``; a frame with no visible joint gets NaN,
  so indices stay aligned with frame numbers (use :func:`evaluated` to drop them).
  The acceleration error is the exception and follows the TCMR/VIBE reference:
  :func:`acceleration_error` returns only the kept triplets; use
  :func:`acceleration_error_with_mask` to keep frame alignment.
* Temporal metrics (velocity, acceleration) must be called per sequence: feeding a
  concatenation of several videos would difference across their boundary. Use
  :func:`per_sequence` / :func:`split_sequences` for lists or flat arrays.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

ArrayLike = np.ndarray

__all__ = [
    "joint_errors", "mpjpe", "procrustes_align", "p_mpjpe", "n_mpjpe", "mpjve",
    "acceleration", "acceleration_error", "acceleration_error_with_mask", "pve",
    "root_align", "center_on", "evaluated", "per_sequence", "split_sequences",
    "joint_mask", "masked_frame_mean",
]


def _poses(x: ArrayLike, name: str, ndim: int = 3) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim or arr.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape (T, J, 3), got {arr.shape}")
    return arr


def _pair(pred: ArrayLike, gt: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, g = _poses(pred, "pred"), _poses(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred shape {p.shape} != gt shape {g.shape}")
    return p, g


def joint_mask(mask: ArrayLike | None, t: int, j: int) -> np.ndarray:
    """Broadcast a (T,) or (T, J) boolean mask to (T, J); None means all visible."""
    if mask is None:
        return np.ones((t, j), dtype=bool)
    m = np.asarray(mask)
    if m.dtype != bool:
        raise TypeError(f"mask: expected a bool array, got dtype {m.dtype}")
    if m.shape == (t,):
        return np.repeat(m[:, None], j, axis=1)
    if m.shape == (t, j):
        return m
    raise ValueError(f"mask: expected shape ({t},) or ({t}, {j}), got {m.shape}")


def masked_frame_mean(err: np.ndarray, jm: np.ndarray) -> np.ndarray:
    """Mean of (T, J) errors over visible joints per frame -> (T,), NaN if none visible."""
    count = jm.sum(axis=1)
    total = np.where(jm, err, 0.0).sum(axis=1)
    out = np.full(err.shape[0], np.nan)
    ok = count > 0
    out[ok] = total[ok] / count[ok]
    return out


def joint_errors(pred: ArrayLike, gt: ArrayLike) -> np.ndarray:
    """Euclidean distance per joint: (T, J, 3), (T, J, 3) -> (T, J)."""
    p, g = _pair(pred, gt)
    return np.linalg.norm(p - g, axis=-1)


def mpjpe(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None = None) -> np.ndarray:
    """Mean per-joint position error per frame (VideoPose3D Protocol 1).

    pred, gt: (T, J, 3); mask: (T,) or (T, J) bool. Returns (T,), NaN where a frame
    has no visible joint. No alignment: root-align the inputs first if wanted.
    """
    err = joint_errors(pred, gt)
    return masked_frame_mean(err, joint_mask(mask, *err.shape))


def procrustes_align(pred: ArrayLike, gt: ArrayLike,
                     mask: ArrayLike | None = None) -> np.ndarray:
    """Per-frame similarity alignment of pred onto gt -> aligned pred (T, J, 3).

    For each frame, finds scale s, rotation R (det R = +1: a reflection is never used
    to fit, even when it would fit better) and translation t minimising
    ``sum_j |s * R p_j + t - g_j|^2`` (orthogonal Procrustes via SVD, batched over T).
    This is the maths of VideoPose3D Protocol 2 and of TCMR/VIBE PA-MPJPE.

    mask: optional (T,) or (T, J) bool; the fit uses visible joints only and the
    transform is applied to all joints. Frames with no visible joint are returned
    unchanged. A frame whose (visible) prediction is a single point gets scale 0,
    i.e. every joint maps to the gt centroid, instead of a division by zero.
    """
    p, g = _pair(pred, gt)
    t, j, _ = p.shape
    w = joint_mask(mask, t, j).astype(np.float64)[..., None]      # (T, J, 1)
    n = w.sum(axis=1, keepdims=True)                                 # (T, 1, 1)
    empty = n[:, 0, 0] == 0
    n = np.where(n == 0, 1.0, n)
    mu_p = (w * p).sum(axis=1, keepdims=True) / n
    mu_g = (w * g).sum(axis=1, keepdims=True) / n
    pc, gc = p - mu_p, g - mu_g
    # Cross-covariance of the visible joints; its SVD gives the optimal rotation.
    cov = np.einsum("tji,tjk->tik", w * pc, gc)                      # (T, 3, 3)
    u, sig, vt = np.linalg.svd(cov)
    # Sign fix: flip the weakest axis when U V^T would be a reflection.
    d = np.where(np.linalg.det(u @ vt) < 0, -1.0, 1.0)
    fix = np.ones((t, 3))
    fix[:, 2] = d
    rot = (u * fix[:, None, :]) @ vt                                 # acts on row vectors
    var_p = (w * pc ** 2).sum(axis=(1, 2))
    trace = (sig * fix).sum(axis=1)
    scale = np.divide(trace, var_p, out=np.zeros(t), where=var_p > 0)
    aligned = scale[:, None, None] * (pc @ rot) + mu_g
    aligned[empty] = p[empty]
    return aligned


def p_mpjpe(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None = None) -> np.ndarray:
    """MPJPE after per-frame Procrustes alignment (Protocol 2 / PA-MPJPE).

    pred, gt: (T, J, 3); mask (T,) or (T, J) bool restricts both the fit and the
    average. Returns (T,), NaN where a frame has no visible joint.
    """
    return mpjpe(procrustes_align(pred, gt, mask), gt, mask)


def n_mpjpe(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None = None) -> np.ndarray:
    """MPJPE after per-frame least-squares scaling only (VideoPose3D Protocol 3).

    scale_t = sum(pred_t * gt_t) / sum(pred_t * pred_t) over (visible) joints and
    coordinates; no rotation or translation. pred, gt: (T, J, 3) -> (T,).
    """
    p, g = _pair(pred, gt)
    w = joint_mask(mask, p.shape[0], p.shape[1]).astype(np.float64)[..., None]
    num = (w * p * g).sum(axis=(1, 2))
    den = (w * p * p).sum(axis=(1, 2))
    scale = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return mpjpe(scale[:, None, None] * p, g, mask)


def mpjve(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None = None) -> np.ndarray:
    """Mean per-joint velocity error (VideoPose3D MPJVE), per frame pair.

    Norm of (pred[t+1] - pred[t]) - (gt[t+1] - gt[t]) averaged over joints; NOT divided
    by the frame interval. pred, gt: (T, J, 3) -> (T-1,). Entry t covers frames t, t+1;
    with a mask a joint counts only if visible in both frames (NaN if none does).
    """
    p, g = _pair(pred, gt)
    t, j, _ = p.shape
    jm = joint_mask(mask, t, j)
    err = np.linalg.norm(np.diff(p, axis=0) - np.diff(g, axis=0), axis=-1)
    return masked_frame_mean(err, jm[1:] & jm[:-1])


def _second_diff(x: np.ndarray) -> np.ndarray:
    return x[:-2] - 2.0 * x[1:-1] + x[2:]


def acceleration(joints: ArrayLike) -> np.ndarray:
    """Acceleration MAGNITUDE of one pose sequence (VIBE's "ACCEL"), not an error.

    |X[t+1] - 2 X[t] + X[t-1]| averaged over joints, t = 1..T-2, per frame^2 (no fps
    division). joints: (T, J, 3) -> (T-2,); entry i is centred on frame i + 1.
    """
    x = _poses(joints, "joints")
    return np.linalg.norm(_second_diff(x), axis=-1).mean(axis=1)


def acceleration_error_with_mask(pred: ArrayLike, gt: ArrayLike,
                                 vis: ArrayLike | None = None
                                 ) -> tuple[np.ndarray, np.ndarray]:
    """Acceleration error keeping frame alignment -> (values (T-2,), kept (T-2,) bool).

    values[i] = mean over joints of |acc_pred - acc_gt| for the triplet centred on
    frame i + 1 (NaN where not kept). vis: (T,) bool keeps a triplet only if frames
    t-1, t, t+1 are all visible (TCMR/VIBE); (T, J) bool applies the same rule per
    joint and keeps the triplet if at least one joint survives.
    """
    p, g = _pair(pred, gt)
    t, j, _ = p.shape
    if t < 3:
        return np.zeros(0), np.zeros(0, dtype=bool)
    err = np.linalg.norm(_second_diff(p) - _second_diff(g), axis=-1)   # (T-2, J)
    jm = joint_mask(vis, t, j)
    trip = jm[:-2] & jm[1:-1] & jm[2:]
    values = masked_frame_mean(err, trip)
    return values, trip.any(axis=1)


def acceleration_error(pred: ArrayLike, gt: ArrayLike,
                       vis: ArrayLike | None = None) -> np.ndarray:
    """Acceleration ERROR (TCMR "Accel", VIBE "ACCEL_ERR"): only kept triplets.

    pred, gt: (T, J, 3); vis: optional (T,) or (T, J) bool. Returns (K,) with K <= T-2,
    the kept entries of :func:`acceleration_error_with_mask` in frame order.
    """
    values, kept = acceleration_error_with_mask(pred, gt, vis)
    return values[kept]


def pve(pred_verts: ArrayLike, gt_verts: ArrayLike) -> np.ndarray:
    """Per-vertex error: mean vertex distance per frame, no alignment (TCMR/VIBE PVE).

    pred_verts, gt_verts: (T, V, 3) -> (T,).
    """
    p, g = _poses(pred_verts, "pred_verts"), _poses(gt_verts, "gt_verts")
    if p.shape != g.shape:
        raise ValueError(f"pred_verts shape {p.shape} != gt_verts shape {g.shape}")
    return np.linalg.norm(p - g, axis=-1).mean(axis=1)


def center_on(x: ArrayLike, joints_idx: int | Sequence[int]) -> np.ndarray:
    """Subtract the mean of the given joints per frame: (..., J, 3) -> (..., J, 3).

    An int centres on one joint (pelvis); a list centres on their mean (e.g. the two
    hips, as TCMR does for 3DPW).
    """
    arr = np.asarray(x, dtype=np.float64)
    idx = [joints_idx] if isinstance(joints_idx, (int, np.integer)) else list(joints_idx)
    if not idx:
        raise ValueError("center_on: joints_idx is empty")
    j = arr.shape[-2]
    bad = [i for i in idx if not -j <= i < j]
    if bad:
        raise IndexError(f"center_on: joint index {bad[0]} out of range for {j} joints")
    return arr - arr[..., idx, :].mean(axis=-2, keepdims=True)


def root_align(x: ArrayLike, root: int = 0) -> np.ndarray:
    """Make poses root-relative: (..., J, 3) minus joint ``root`` -> root at the origin."""
    return center_on(x, int(root))


def evaluated(values: ArrayLike) -> np.ndarray:
    """Drop the NaN (not evaluated) entries of a per-frame metric array."""
    v = np.asarray(values, dtype=np.float64)
    return v[~np.isnan(v)]


def split_sequences(x: ArrayLike, lengths: Sequence[int]) -> list[np.ndarray]:
    """Split a flat per-frame array (N, ...) into per-sequence pieces of ``lengths``."""
    arr = np.asarray(x)
    lens = [int(n) for n in lengths]
    if any(n < 0 for n in lens) or sum(lens) != arr.shape[0]:
        raise ValueError(f"split_sequences: lengths sum to {sum(lens)} "
                         f"but the array has {arr.shape[0]} frames")
    return np.split(arr, np.cumsum(lens)[:-1]) if lens else []


def per_sequence(metric: Callable[..., np.ndarray], preds: Sequence[ArrayLike],
                 gts: Sequence[ArrayLike],
                 masks: Sequence[ArrayLike | None] | None = None) -> list[np.ndarray]:
    """Apply ``metric(pred, gt[, mask])`` to each sequence separately.

    Temporal metrics therefore never difference across a sequence boundary. Returns
    one per-frame array per sequence; ``np.concatenate`` them for a pooled mean.
    """
    if len(preds) != len(gts):
        raise ValueError(f"per_sequence: {len(preds)} predictions but {len(gts)} targets")
    if masks is not None and len(masks) != len(preds):
        raise ValueError(f"per_sequence: {len(masks)} masks for {len(preds)} sequences")
    out = []
    for i, (p, g) in enumerate(zip(preds, gts)):
        m = None if masks is None else masks[i]
        out.append(metric(p, g) if m is None else metric(p, g, m))
    return out
