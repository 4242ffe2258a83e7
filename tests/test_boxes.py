"""Box sources: array layouts, COCO/PoseTrack JSON, TCMR joint boxes and smoothing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage, signal

from poselift.extract.boxes import (BoxError, boxes_from_array, boxes_from_joints, joints_to_box_params,
                                    load_coco_detections, load_posetrack_tracks, smooth_boxes, to_xyxy)


def test_array_layouts() -> None:
    cxcywh = np.array([[50, 40, 20, 60], [np.nan, 0, 1, 1], [5, 5, 0, 4]], np.float64)
    t = boxes_from_array(cxcywh, "cxcywh")
    np.testing.assert_allclose(t.boxes[0], [40, 10, 60, 70])
    assert t.valid.tolist() == [True, False, False] and np.isnan(t.boxes[1:]).all()
    np.testing.assert_allclose(to_xyxy([[1, 2, 3, 4]], "xywh"), [[1, 2, 4, 6]])
    with pytest.raises(BoxError, match="unknown box format"):
        to_xyxy([[1, 2, 3, 4]], "yxyx")
    with pytest.raises(BoxError, match="no frame has a person box"):
        boxes_from_array(np.full((4, 4), np.nan), "xyxy").require_boxes("seq S1")


def test_coco_detections_pick_best_person_and_check_frames(tmp_path: Path) -> None:
    dets = [
        {"image_id": 0, "category_id": 1, "bbox": [10, 10, 20, 40], "score": 0.9},
        {"image_id": 0, "category_id": 1, "bbox": [0, 0, 50, 50], "score": 0.5},
        {"image_id": 0, "category_id": 3, "bbox": [0, 0, 60, 60], "score": 0.99},  # a car
        {"image_id": "000002.jpg", "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.2},
    ]
    p = tmp_path / "dets.json"
    p.write_text(json.dumps(dets))
    t = load_coco_detections(p, 4)
    np.testing.assert_allclose(t.boxes[0], [10, 10, 30, 50])
    np.testing.assert_allclose(t.boxes[2], [1, 2, 4, 6])
    assert t.valid.tolist() == [True, False, True, False]
    np.testing.assert_allclose(t.scores, [0.9, 0, 0.2, 0], rtol=1e-6)
    np.testing.assert_allclose(load_coco_detections(p, 4, select="area").boxes[0], [0, 0, 50, 50])
    assert load_coco_detections(p, 4, min_score=0.3).valid.tolist() == [True, False, False, False]
    with pytest.raises(BoxError, match=r"dets.json: entry 3 \(image_id '000002.jpg'\) refers to frame 2, "
                                       r"but the video has 2 frames"):
        load_coco_detections(p, 2)
    (tmp_path / "bad.json").write_text(json.dumps([{"image_id": 0}]))
    with pytest.raises(BoxError, match="bad.json: entry 0 lacks"):
        load_coco_detections(tmp_path / "bad.json", 3)


def test_posetrack_tracks(tmp_path: Path) -> None:
    data = {"images": [{"id": 1002, "file_name": "b/000002.jpg", "frame_id": 1002},
                       {"id": 1000, "file_name": "b/000000.jpg", "frame_id": 1000},
                       {"id": 1001, "file_name": "b/000001.jpg", "frame_id": 1001}],
            "annotations": [{"image_id": 1000, "track_id": 0, "bbox": [0, 0, 10, 20]},
                            {"image_id": 1002, "track_id": 0, "bbox": [2, 2, 10, 20]},
                            {"image_id": 1001, "track_id": 7, "bbox": [5, 5, 5, 5]}]}
    p = tmp_path / "pt.json"
    p.write_text(json.dumps(data))
    tr = load_posetrack_tracks(p)
    assert sorted(tr) == [0, 7]
    assert tr[0].valid.tolist() == [True, False, True] and tr[7].valid.tolist() == [False, True, False]
    np.testing.assert_allclose(tr[0].boxes[2], [2, 2, 12, 22])
    with pytest.raises(BoxError, match="pt.json: annotation 1 refers to frame 2, but the video has 2 frames"):
        load_posetrack_tracks(p, n_frames=2)


def _reference_joint_params(kps: np.ndarray, thr: float) -> tuple[np.ndarray, int, int]:
    """Straightforward re-statement of the documented rule for cross-checking."""
    params, idx = [], []
    for i, kp in enumerate(kps):
        vis = kp[:, 2] > thr
        if vis.sum() == 0:
            continue
        lo, hi = kp[vis, :2].min(0), kp[vis, :2].max(0)
        d = np.linalg.norm(hi - lo)
        if d < 0.5:
            continue
        params.append([*(lo + hi) / 2, 150 / d])
        idx.append(i)
    idx, params = np.array(idx), np.array(params)
    full = np.arange(idx[0], idx[-1] + 1)
    out = np.stack([np.interp(full, idx, params[:, j]) for j in range(3)], 1)
    return out, int(idx[0]), int(idx[-1]) + 1


def test_joint_boxes_follow_tcmr_rule() -> None:
    rng = np.random.default_rng(0)
    t, j = 40, 14
    base = np.cumsum(rng.normal(0, 2, (t, 1, 2)), 0) + 300
    kps = np.concatenate([base + rng.normal(0, 40, (t, j, 2)), rng.uniform(0, 1, (t, j, 1))], -1)
    kps[:3, :, 2] = 0.1   # leading frames without confident joints are cut
    kps[10:13, :, 2] = 0.0  # a hole in the middle is interpolated
    kps[-2:, :, 2] = 0.2
    params, s, e = joints_to_box_params(kps, 0.3)
    want, ws, we = _reference_joint_params(kps, 0.3)
    assert (s, e) == (ws, we) == (3, t - 2)
    np.testing.assert_allclose(params, want, rtol=1e-12)
    tr = boxes_from_joints(kps, smooth=True)
    sm = np.stack([ndimage.gaussian_filter(signal.medfilt(c, 11), 8) for c in want.T], 1)
    side = 150 / sm[:, 2] * 1.1
    np.testing.assert_allclose(tr.boxes[s:e, 0], sm[:, 0] - side / 2, rtol=1e-5)
    np.testing.assert_allclose(tr.boxes[s:e, 3] - tr.boxes[s:e, 1], side, rtol=1e-5)
    assert tr.valid.tolist() == [False] * 3 + [True] * (t - 5) + [False] * 2
    raw = boxes_from_joints(kps, smooth=False, side_factor=0.9)
    np.testing.assert_allclose(raw.boxes[5, 2] - raw.boxes[5, 0], 0.9 * 150 / want[2, 2], rtol=1e-5)


def test_smooth_boxes_interpolates_gaps_and_reduces_jitter() -> None:
    rng = np.random.default_rng(3)
    t = 60
    c = np.stack([np.linspace(100, 200, t), np.full(t, 80.0), np.full(t, 40.0), np.full(t, 90.0)], 1)
    noisy = c + rng.normal(0, 3, c.shape)
    tr = boxes_from_array(noisy, "cxcywh")
    tr.valid[20:25] = False
    tr.boxes[20:25] = np.nan
    sm = smooth_boxes(tr)
    assert sm.valid.all() and np.isfinite(sm.boxes).all()
    truth = to_xyxy(c, "cxcywh")
    inner = slice(10, 50)  # away from the zero-padded median edges
    assert np.abs(sm.boxes[inner] - truth[inner]).mean() < 0.5 * np.abs(tr.boxes[inner][tr.valid[inner]]
                                                                        - truth[inner][tr.valid[inner]]).mean()
