"""Parametric pose NMS on hand-built multi-person frames."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from poselift.extract.estimators.pose_nms import PoseNMSParams, pose_nms

K = 17


def _pose(x0: float, y0: float, k: int = K) -> np.ndarray:
    """A (k, 2) pose spread over a ~100 x 200 px person whose top-left is (x0, y0)."""
    t = np.arange(k)
    return np.stack([x0 + 10 + (t * 37) % 80, y0 + 10 + (t * 11) % 180], axis=1).astype(np.float32)


def _frame(poses: list[np.ndarray], kp_scores: list[float], box_scores: list[float]):
    n = len(poses)
    boxes = []
    for p in poses:
        x0, y0 = p.min(0) - 10
        boxes.append([x0, y0, x0 + 100, y0 + 200])
    scores = torch.tensor([[[s]] * poses[0].shape[0] for s in kp_scores], dtype=torch.float32)
    return (torch.tensor(boxes, dtype=torch.float32), torch.tensor(box_scores)[:, None],
            torch.arange(10, 10 + n)[:, None], torch.from_numpy(np.stack(poses).astype(np.float32)), scores)


def _scene():
    pa = _pose(100, 100)
    poses = [
        _pose(600, 100),          # 0: person B, alone, strong box score
        pa + [2.0, 0.0],          # 1: duplicate of A
        pa,                       # 2: person A, best keypoints
        pa + [0.0, -3.0],         # 3: duplicate of A
        _pose(1200, 100),         # 4: person C, keypoints too weak to report
        pa + [25.0, 0.0],         # 5: person D standing 25 px beside A
    ]
    return _frame(poses, [0.8, 0.6, 0.9, 0.5, 0.2, 0.7], [0.99, 0.9, 0.5, 0.9, 0.9, 0.3])


def test_duplicates_merge_distinct_people_kept_pick_order_by_mean_score() -> None:
    boxes, box_scores, ids, preds, scores = _scene()
    res = pose_nms(boxes, box_scores, ids, preds, scores, PoseNMSParams())
    # A (mean 0.9) first although its box score is lowest; C is picked last but dropped.
    assert res.pick_ids == [2, 0, 5]
    assert res.box_ids == [[[11], [12], [13]], [10], [15]]  # singleton: bare row, as upstream
    assert res.boxes[0] == boxes[2].tolist() and torch.equal(res.box_scores[0], box_scores[2])
    pa = preds[2]
    # Score-weighted merge: weights 0.6, 0.9, 0.5 of offsets (+2, 0), (0, 0), (0, -3).
    assert torch.allclose(res.poses[0], pa + torch.tensor([0.6, -0.75]), atol=1e-5)
    assert torch.allclose(res.pose_scores[0], torch.full((K, 1), (0.36 + 0.81 + 0.25) / 2.0), atol=1e-6)
    assert res.pose_scores[0].shape == (K, 1) and res.poses[0].shape == (K, 2)
    assert torch.equal(res.poses[1], preds[0]) and torch.equal(res.poses[2], preds[5])
    prop = res.proposal_scores()
    assert np.isclose(prop[1], 0.8 + 0.99 + 1.25 * 0.8, atol=1e-6)


def test_merge_radius_excludes_far_keypoints_and_inputs_untouched() -> None:
    pa = _pose(100, 100)
    far = pa.copy()
    far[0] += [30.0, 0.0]  # one keypoint off by 30 px > min(ref, 15): not merged there
    boxes, box_scores, ids, preds, scores = _frame([pa, far], [0.9, 0.9], [0.9, 0.9])
    scores[1, 3, 0] = 0.0
    before = scores.clone()
    res = pose_nms(boxes, box_scores, ids, preds, scores)
    assert res.pick_ids == [0] and res.box_ids == [[[10], [11]]]
    assert torch.allclose(res.poses[0][0], preds[0, 0])
    assert torch.allclose(res.pose_scores[0][0], torch.tensor([0.9]))
    # Keypoint 3: the zero score became 1e-5 (as upstream) before merging.
    assert torch.allclose(res.pose_scores[0][3], torch.tensor([(0.81 + 1e-10) / (0.9 + 1e-5)]))
    assert torch.equal(scores, before)


def test_score_match_radius_is_a_parameter() -> None:
    pa = _pose(100, 100)
    frame = _frame([pa, pa + [0.5, 0.0]], [1.0, 1.0], [0.9, 0.9])
    # Only the score term can delete: 17 * tanh(1)^2 = 9.88 > gamma = 5 when within the radius.
    p = PoseNMSParams(mu=0.0, gamma=5.0, match_thresh=1000.0)
    assert pose_nms(*frame, params=p).pick_ids == [0]
    assert pose_nms(*frame, params=dataclasses.replace(p, score_match_radius=0.25)).pick_ids == [0, 1]


def test_min_box_area_and_score_threshold() -> None:
    frame = _scene()
    res = pose_nms(*frame, min_box_area=0.0)
    assert 4 not in res.pick_ids  # max score 0.2 < 0.3
    extent = float((frame[3][0].max(0).values - frame[3][0].min(0).values).prod())
    assert pose_nms(*frame, min_box_area=1.5 ** 2 * extent - 1).pick_ids.count(0) == 1
    assert 0 not in pose_nms(*frame, min_box_area=1.5 ** 2 * extent + 1).pick_ids


def test_fullbody_preset_and_no_hidden_global_state() -> None:
    full = PoseNMSParams.fullbody_regression()
    assert (full.mu, full.delta2, full.gamma, full.score_thresh, full.match_thresh, full.alpha) == \
        (1.65, 8.0, 3.6, 0.01, 3.0, 0.15)
    with pytest.raises(dataclasses.FrozenInstanceError):
        full.gamma = 1.0  # type: ignore[misc]
    body_frame = _scene()
    first = pose_nms(*body_frame)
    pa = _pose(100, 100, 136)
    poses = [pa, pa + [1.5, 0.0], _pose(700, 100, 136)]
    res = pose_nms(*_frame(poses, [0.6, 0.5, 0.4], [0.9, 0.9, 0.9]), params=full)
    assert res.pick_ids == [0, 2] and res.box_ids == [[[10], [11]], [12]]
    assert res.poses[0].shape == (136, 2)
    again = pose_nms(*body_frame)
    assert again.pick_ids == first.pick_ids and again.box_ids == first.box_ids
    assert all(torch.equal(a, b) for a, b in zip(again.poses, first.poses))


def test_empty_frame() -> None:
    res = pose_nms(torch.zeros(0, 4), torch.zeros(0, 1), torch.zeros(0, 1), torch.zeros(0, K, 2),
                   torch.zeros(0, K, 1))
    assert res.pick_ids == [] and len(res) == 6
