"""AlphaPose parametric pose NMS (P-NMS) with explicit parameters.

Reproduces ``alphapose/utils/pPose_nms.py`` (``pose_nms_body`` / ``pose_nms_fullbody``)
numerically, with these differences in form only:

* every threshold lives in :class:`PoseNMSParams`, passed per call. The reference overwrites
  module globals when it first sees a 136/133-point regression model, which changes every
  later call in the process; here the caller picks :meth:`PoseNMSParams.fullbody_regression`.
* the 1-pixel radius of the score term (``score_match_radius``) and the 7 / 15 px caps of the
  PCK match and of the merge radius are named parameters (defaults = the reference's).
* inputs are not modified (the reference writes ``pose_scores[pose_scores == 0] = 1e-5`` into
  the caller's tensor).

Algorithm (body, K != 133/136): ``ref = alpha * max(box_w, box_h)``; repeatedly pick the
remaining candidate with the highest mean keypoint score; its similarity to each remaining
candidate is ``sum_k tanh(s_k/d1) tanh(s'_k/d1) [dist_k <= radius] + mu * sum_k exp(-dist_k/d2)``;
delete candidates with similarity > gamma or with >= match_thresh keypoints within
``min(ref, 7)``; merge the pick with the deleted ones per keypoint (score-weighted mean of the
candidates within ``min(ref, 15)``, merged score ``sum s^2 / sum s``); drop poses whose max
score < score_thresh or whose ``1.5^2 * keypoint-extent area < min_box_area``.
The full-body variant uses means per part (body / 68 face / 42 hands), part factors and
weights, and only counts low-score keypoints in the score term, exactly as the reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = ["PoseNMSParams", "PoseNMSResult", "pose_nms"]

# Part splits of the full-body similarity (from the end: 68 face + 42 hand points) and of the
# full-body PCK count (absolute: body < 26 <= face < 94 <= hands), as hard-coded upstream.
_FACE_FROM_END, _HAND_FROM_END = 110, 42
_PCK_FACE_START, _PCK_HAND_START = 26, 94


@dataclass(frozen=True)
class PoseNMSParams:
    """P-NMS thresholds; defaults are AlphaPose's body / heatmap-model values."""

    delta1: float = 1.0
    mu: float = 1.7
    delta2: float = 2.65
    gamma: float = 22.48
    score_thresh: float = 0.3
    match_thresh: float = 5.0
    alpha: float = 0.1
    score_match_radius: float = 1.0   # px; keypoints closer than this enter the score term
    pck_radius_cap: float = 7.0       # px; match radius = min(ref, cap)
    merge_radius_cap: float = 15.0    # px; merge radius = min(ref, cap)
    area_factor: float = 1.5          # box-area filter uses (factor^2) * keypoint extent
    face_factor: float = 1.9
    hand_factor: float = 0.55
    face_weight_score: float = 1.0
    hand_weight_score: float = 0.1
    face_weight_dist: float = 1.0
    hand_weight_dist: float = 1.5

    @classmethod
    def fullbody_regression(cls) -> "PoseNMSParams":
        """Values AlphaPose switches to for 136/133-keypoint regression (SIKR) models."""
        return cls(delta1=1.0, mu=1.65, delta2=8.0, gamma=3.6, score_thresh=0.01,
                   match_thresh=3.0, alpha=0.15)


class PoseNMSResult(NamedTuple):
    """Survivors in pick order; same six lists, same order, as the reference's return tuple.

    boxes: list of [x0, y0, x1, y1] (python floats) of each picked detection.
    box_scores: list of (1,)-shaped (or 0-d, following the input) tensors of the picked box score.
    box_ids: per survivor, the ids of the merged candidates in ascending candidate order, as
        upstream builds them: ``box_ids[merged].tolist()`` (``[[3.0], [5.0]]`` for a (n, 1)
        input) when several were merged, but the bare row ``box_ids[j].tolist()`` (``[3.0]``)
        when the pick merged only itself.
    poses: list of (K, 2) float tensors, merged keypoints.
    pose_scores: list of (K, 1) float tensors, merged keypoint scores.
    pick_ids: list of int, index of each survivor in the input.
    """

    boxes: list[list[float]]
    box_scores: list[torch.Tensor]
    box_ids: list[list[Any]]
    poses: list[torch.Tensor]
    pose_scores: list[torch.Tensor]
    pick_ids: list[int]

    def proposal_scores(self) -> list[float]:
        """AlphaPose's output ``score``: mean(kp) + box score + 1.25 * max(kp) per survivor."""
        return [float(s.mean() + b.reshape(-1)[0] + 1.25 * s.max())
                for s, b in zip(self.pose_scores, self.box_scores)]


def _dist(ref_pose: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
    """(K, 2) vs (m, K, 2) -> (m, K) Euclidean distances."""
    return torch.sqrt(torch.sum((ref_pose[None] - poses) ** 2, dim=2))


def _similarity(i: int, poses: torch.Tensor, scores: torch.Tensor, p: PoseNMSParams,
                fullbody: bool) -> torch.Tensor:
    """Parametric similarity of candidate ``i`` to all (m) candidates: (m,)."""
    m, k = scores.shape
    dist = _dist(poses[i], poses)
    near = dist <= p.score_match_radius
    if fullbody:
        low = scores < p.score_thresh  # the reference scores only low-confidence keypoints here
        near = near & low
    pick_scores = scores[i][None].expand(m, k)
    score_term = torch.zeros(m, k, dtype=scores.dtype)
    score_term[near] = torch.tanh(pick_scores[near] / p.delta1) * torch.tanh(scores[near] / p.delta1)
    point = torch.exp(-dist / p.delta2)
    if not fullbody:
        return score_term.sum(dim=1) + p.mu * point.sum(dim=1)
    f0, h0 = k - _FACE_FROM_END, k - _HAND_FROM_END
    point[:, f0:h0] = torch.exp(-dist[:, f0:h0] / (p.delta2 * p.face_factor))
    point[:, h0:] = torch.exp(-dist[:, h0:] / (p.delta2 * p.hand_factor))
    point[low] = 0
    return (score_term[:, :f0].mean(1) + score_term[:, f0:h0].mean(1) * p.face_weight_score
            + score_term[:, h0:].mean(1) * p.hand_weight_score
            + p.mu * (point[:, :f0].mean(1) + point[:, f0:h0].mean(1) * p.face_weight_dist
                      + point[:, h0:].mean(1) * p.hand_weight_dist))


def _pck_matches(i: int, poses: torch.Tensor, scores: torch.Tensor, ref: torch.Tensor,
                 p: PoseNMSParams, fullbody: bool) -> torch.Tensor:
    """Number of keypoints of each candidate matching candidate ``i``: (m,)."""
    m, k = scores.shape
    radius = torch.clamp(ref, max=p.pck_radius_cap)
    if not fullbody:
        return torch.sum(_dist(poses[i], poses) / radius <= 1, dim=1)
    valid = float((scores[i] > p.score_thresh / 2).sum()) * m * 2  # reference's mask.sum()
    if valid < 2:
        return torch.zeros(m)
    d = _dist(poses[i], poses) / radius
    n = (torch.sum(d[:, :_PCK_FACE_START] <= 1, dim=1)
         + torch.sum(d[:, _PCK_FACE_START:_PCK_HAND_START] <= p.face_factor, dim=1)
         + torch.sum(d[:, _PCK_HAND_START:] <= p.hand_factor, dim=1))
    # Reference normalisation, kept verbatim in effect (it depends on m).
    return n / valid / 2 * k


def _merge(ref_pose: torch.Tensor, poses: torch.Tensor, scores: torch.Tensor, ref: torch.Tensor,
           p: PoseNMSParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Score-weighted merge of (m, K, 2) poses / (m, K, 1) scores near ``ref_pose`` -> (K, 2), (K, 1)."""
    near = _dist(ref_pose, poses) <= torch.clamp(ref, max=p.merge_radius_cap)
    masked = scores * near.to(scores.dtype).unsqueeze(-1)
    normed = masked / masked.sum(dim=0)
    return (poses * normed).sum(dim=0), (masked * normed).sum(dim=0)


def pose_nms(boxes: torch.Tensor | np.ndarray, box_scores: torch.Tensor | np.ndarray,
             box_ids: torch.Tensor | np.ndarray, pose_preds: torch.Tensor | np.ndarray,
             pose_scores: torch.Tensor | np.ndarray, params: PoseNMSParams | None = None,
             min_box_area: float = 0.0) -> PoseNMSResult:
    """Parametric pose NMS over one frame's n candidates.

    Args:
        boxes: (n, 4) detector boxes xyxy. box_scores: (n, 1). box_ids: (n, 1) (or (n,)).
        pose_preds: (n, K, 2) image keypoints. pose_scores: (n, K, 1) (or (n, K)).
        params: thresholds (default: body values). K in {133, 136} selects the full-body
            algorithm; pass :meth:`PoseNMSParams.fullbody_regression` for SIKR full-body models.
        min_box_area: drop survivors whose ``area_factor^2 * keypoint-extent area`` is smaller.
    """
    p = params if params is not None else PoseNMSParams()
    boxes_t = torch.as_tensor(boxes, dtype=torch.float32)
    box_scores_t = torch.as_tensor(box_scores)
    box_ids_t = torch.as_tensor(box_ids)
    preds = torch.as_tensor(pose_preds, dtype=torch.float32).clone()
    n, k = preds.shape[:2]
    scores3 = torch.as_tensor(pose_scores, dtype=torch.float32).reshape(n, k, 1).clone()
    scores3[scores3 == 0] = 1e-5
    scores = scores3[..., 0]
    fullbody = k in (133, 136)
    if n == 0:
        return PoseNMSResult([], [], [], [], [], [])

    widths = boxes_t[:, 2] - boxes_t[:, 0]
    heights = boxes_t[:, 3] - boxes_t[:, 1]
    ref_dists = p.alpha * torch.maximum(widths, heights)
    human_scores = scores3.mean(dim=1)  # (n, 1)

    remaining = np.ones(n, dtype=bool)
    picks: list[int] = []
    merge_sets: list[np.ndarray] = []
    while remaining.any():
        idx = np.flatnonzero(remaining)
        sel = torch.from_numpy(idx)
        local = int(torch.argmax(human_scores[sel]))  # first maximum wins ties, as upstream
        pick = int(idx[local])
        picks.append(pick)
        simi = _similarity(local, preds[sel], scores[sel], p, fullbody)
        matches = _pck_matches(local, preds[sel], scores[sel], ref_dists[pick], p, fullbody)
        delete = np.flatnonzero(((simi > p.gamma) | (matches >= p.match_thresh)).numpy())
        if delete.size == 0:
            delete = np.array([local])
        merge_sets.append(idx[delete])
        remaining[idx[delete]] = False

    out = PoseNMSResult([], [], [], [], [], [])
    for pick, merged in zip(picks, merge_sets):
        if scores3[pick].max() < p.score_thresh:
            continue
        m_sel = torch.from_numpy(merged)
        pose, score = _merge(preds[pick], preds[m_sel], scores3[m_sel], ref_dists[pick], p)
        if score.max() < p.score_thresh:
            continue
        dx = pose[:, 0].max() - pose[:, 0].min()
        dy = pose[:, 1].max() - pose[:, 1].min()
        if p.area_factor ** 2 * dx * dy < min_box_area:
            continue
        out.boxes.append(boxes_t[pick].tolist())
        out.box_scores.append(box_scores_t[pick].cpu())
        # Upstream indexes with a 1-element tensor, which numpy takes as a scalar: a lone
        # merged candidate gives its bare row, several give a list of rows.
        ids = box_ids_t[m_sel]
        out.box_ids.append(ids[0].tolist() if len(merged) == 1 else ids.tolist())
        out.poses.append(pose)
        out.pose_scores.append(score)
        out.pick_ids.append(pick)
    return out
