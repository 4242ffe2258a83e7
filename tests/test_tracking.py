"""Multi-person tracker on synthetic people: crossing, poses, appearance, gaps, birth and death."""
from __future__ import annotations

import numpy as np
import pytest

from poselift.datasets.joints import COCO17, COCO17_SIGMAS
from poselift.extract.tracking import TrackerParams, oks_matrix, plot_tracks, track_people

W, H = 40.0, 100.0
# (u, v) of the 17 COCO joints inside the box; arms down / arms up
DOWN = np.array([[.5, .08], [.45, .06], [.55, .06], [.4, .08], [.6, .08], [.3, .2], [.7, .2],
                 [.25, .35], [.75, .35], [.25, .5], [.75, .5], [.38, .55], [.62, .55],
                 [.38, .75], [.62, .75], [.38, .95], [.62, .95]])
UP = DOWN.copy()
UP[7:11] = [[.15, .05], [.85, .05], [.1, -.1], [.9, -.1]]


def person(cx: float, cy: float, pose: np.ndarray = DOWN) -> tuple[np.ndarray, np.ndarray]:
    box = np.array([cx - W / 2, cy - H / 2, cx + W / 2, cy + H / 2])
    kp = np.concatenate([box[:2] + pose * [W, H], np.ones((17, 1))], 1)
    return box, kp


def frames_of(people_per_frame, rng=None, features=None):
    """people_per_frame[f] = list of (person_key, cx, cy, pose). Returns boxes, kps, keys
    (and features if a key -> vector map is given), detections shuffled when rng is given."""
    boxes, kps, keys, feats = [], [], [], []
    for dets in people_per_frame:
        order = rng.permutation(len(dets)) if rng is not None else np.arange(len(dets))
        bk = [person(dets[i][1], dets[i][2], dets[i][3]) for i in order]
        boxes.append(np.array([b for b, _ in bk]).reshape(-1, 4))
        kps.append(np.array([k for _, k in bk]).reshape(-1, 17, 3))
        keys.append([dets[i][0] for i in order])
        if features is not None:
            feats.append(np.array([features[dets[i][0]] + 0.05 * rng.standard_normal(8)
                                   for i in order]).reshape(-1, 8))
    return boxes, kps, keys, feats


def id_consistency(result, keys) -> dict:
    """person key -> set of track ids given to its detections."""
    seen: dict = {}
    for ids, ks in zip(result.track_ids, keys):
        for i, k in zip(ids, ks):
            seen.setdefault(k, set()).add(int(i))
    return seen


def test_coco_sigmas_symmetric():
    assert COCO17_SIGMAS.shape == (17,) and COCO17_SIGMAS[0] == pytest.approx(0.026)
    assert np.allclose(COCO17_SIGMAS[list(COCO17.left)], COCO17_SIGMAS[list(COCO17.right)])


def test_oks_matrix_formula():
    _, kp = person(100, 100)
    shifted = kp.copy()
    shifted[:, 0] += 3.0
    hidden = kp.copy()
    hidden[:, 2] = 0.0
    got = oks_matrix(kp[None], np.stack([kp, shifted, hidden]), np.array([W * H]), COCO17_SIGMAS, 0.3)
    expect = np.mean(np.exp(-9.0 / (2 * W * H * (2 * COCO17_SIGMAS) ** 2)))
    assert got[0, 0] == pytest.approx(1.0) and got[0, 1] == pytest.approx(expect)
    assert np.isnan(got[0, 2])
    part = shifted.copy()
    part[5:, 2] = 0.0  # only the 5 face joints count
    sub = oks_matrix(kp[None], part[None], np.array([W * H]), COCO17_SIGMAS, 0.3)[0, 0]
    assert sub == pytest.approx(np.mean(np.exp(-9.0 / (2 * W * H * (2 * COCO17_SIGMAS[:5]) ** 2))))


def test_two_people_crossing_keep_their_ids():
    rng = np.random.default_rng(0)
    n = 40
    seq = [[("a", 50 + 300 * f / (n - 1), 200, DOWN), ("b", 350 - 300 * f / (n - 1), 200, DOWN)]
           for f in range(n)]
    boxes, kps, keys, _ = frames_of(seq, rng)
    res = track_people(boxes, kps)
    seen = id_consistency(res, keys)
    assert len(res.tracks) == 2
    assert len(seen["a"]) == 1 and len(seen["b"]) == 1 and seen["a"] != seen["b"]
    assert -1 not in seen["a"] | seen["b"]
    for tr in res.tracks.values():
        assert tr.frames.tolist() == list(range(n)) and not tr.interpolated.any()
    # without the motion model the last boxes swap at the crossing: the check above can fail
    still = track_people(boxes, kps, params=TrackerParams(motion=False))
    assert any(len(v) > 1 for v in id_consistency(still, keys).values())


def test_pose_separates_overlapping_people():
    rng = np.random.default_rng(1)
    seq = [[("a", 200 + rng.normal(0, 1), 200, DOWN), ("b", 201 + rng.normal(0, 1), 200, UP)]
           for _ in range(30)]
    boxes, kps, keys, _ = frames_of(seq, rng)
    seen = id_consistency(track_people(boxes, kps), keys)
    assert len(seen["a"]) == 1 and len(seen["b"]) == 1 and seen["a"] != seen["b"]
    no_pose = id_consistency(track_people(boxes, kps, params=TrackerParams(pose_weight=0)), keys)
    assert any(len(v) > 1 for v in no_pose.values())


def test_appearance_separates_identical_people():
    rng = np.random.default_rng(2)
    vec = {k: v / np.linalg.norm(v) for k, v in (("a", rng.standard_normal(8)), ("b", rng.standard_normal(8)))}
    seq = [[("a", 200 + rng.normal(0, 1), 200, DOWN), ("b", 200 + rng.normal(0, 1), 200, DOWN)]
           for _ in range(30)]
    boxes, kps, keys, feats = frames_of(seq, rng, features=vec)
    seen = id_consistency(track_people(boxes, kps, feats), keys)
    assert len(seen["a"]) == 1 and len(seen["b"]) == 1 and seen["a"] != seen["b"]
    blind = id_consistency(track_people(boxes, kps), keys)  # same people, no features
    assert any(len(v) > 1 for v in blind.values())


def test_occlusion_gap_is_interpolated():
    n, gap = 30, range(10, 15)
    truth = [person(20 + 5 * f, 200 + 2 * f) for f in range(n)]
    boxes = [truth[f][0][None] if f not in gap else np.zeros((0, 4)) for f in range(n)]
    kps = [truth[f][1][None] if f not in gap else np.zeros((0, 17, 3)) for f in range(n)]
    scores = [np.full(len(b), 0.9) for b in boxes]
    res = track_people(boxes, kps, scores=scores, params=TrackerParams(max_gap=8))
    assert list(res.tracks) == [0]
    tr = res.tracks[0]
    assert tr.frames.tolist() == list(range(n))
    assert np.flatnonzero(tr.interpolated).tolist() == list(gap)
    assert np.allclose(tr.boxes, [t[0] for t in truth], atol=1e-3)
    assert np.allclose(tr.keypoints, [t[1] for t in truth], atol=1e-3)
    assert np.all(tr.scores[list(gap)] == 0) and np.all(tr.det_index[list(gap)] == -1)
    assert all(ids.tolist() == [0] for f, ids in enumerate(res.track_ids) if f not in gap)
    short = track_people(boxes, kps, params=TrackerParams(max_gap=3)).tracks
    assert list(short) == [0] and 12 not in short[0].frames and not short[0].interpolated.any()
    flat = res.to_video_detections("clip", "clip.mp4", frame_index=np.arange(100, 100 + n))
    assert flat.tracked and flat.det_pos.tolist() == list(range(n)) and flat.frame_index[0] == 100
    assert np.flatnonzero(flat.scores == 0).tolist() == list(gap)
    assert flat.attrs["interpolated_rows"] == 5 and np.allclose(flat.boxes, tr.boxes)
    assert len(res.to_video_detections("clip", "clip.mp4", include_interpolated=False).boxes) == n - 5
    died = track_people(boxes, kps, params=TrackerParams(max_age=3))
    assert sorted(died.tracks) == [0, 1] and died.tracks[1].frames[0] == 15
    assert [int(i[0]) for i in died.track_ids[15:18]] == [1, 1, 1]  # ids given back retroactively


def test_birth_needs_min_hits_and_returns_get_new_ids():
    n = 40
    seq = []
    for f in range(n):
        dets = [("ghost", 600, 100, DOWN)] if f in (3, 4) else []
        if 5 <= f < 15 or 30 <= f:
            dets.append(("p", 100 + 3 * f if f < 15 else 500 - 3 * (f - 30), 200, DOWN))
        seq.append(dets)
    boxes, kps, keys, _ = frames_of(seq)
    res = track_people(boxes, kps, params=TrackerParams(min_hits=3, max_age=20))
    seen = id_consistency(res, keys)
    assert seen["ghost"] == {-1}  # two hits never confirm a track
    assert seen["p"] == {0, 1}  # left at 15, came back elsewhere at 30: a new id
    assert res.tracks[0].frames.tolist() == list(range(5, 15))
    assert res.tracks[1].frames.tolist() == list(range(30, n))
    assert track_people(boxes, kps, params=TrackerParams(min_hits=1)).track_ids[3].tolist() == [0]


def test_appearance_reidentifies_a_returning_person():
    rng = np.random.default_rng(3)
    vec = {"p": np.eye(8)[0]}
    seq = [[("p", 100 + 3 * f if f < 15 else 500 - 3 * (f - 30), 200, DOWN)] if (f < 15 or f >= 30) else []
           for f in range(45)]
    boxes, kps, keys, feats = frames_of(seq, rng, features=vec)
    params = TrackerParams(max_age=20, appearance_weight=3.0)
    res = track_people(boxes, kps, feats, params=params)
    assert id_consistency(res, keys)["p"] == {0}
    assert 20 not in res.tracks[0].frames  # 15 missing frames > max_gap: not interpolated
    assert id_consistency(track_people(boxes, kps, params=params), keys)["p"] == {0, 1}


def test_plot_tracks_png(tmp_path):
    import matplotlib.image as mpimg

    seq = [[("a", 50 + 5 * f, 200, DOWN), ("b", 300 - 5 * f, 250, DOWN)] if f != 10 else [("a", 100, 200, DOWN)]
           for f in range(25)]
    boxes, kps, _, _ = frames_of(seq)
    res = track_people(boxes, kps)
    assert res.tracks[1].interpolated.sum() == 1
    out = plot_tracks(res, tmp_path / "sub" / "tracks.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(out)
    assert img.shape[:2] == (550, 1000) and img[..., :3].std() > 0.05


def test_bad_inputs():
    with pytest.raises(ValueError, match="min_hits"):
        TrackerParams(min_hits=0)
    with pytest.raises(ValueError, match="keypoints has 1 frames, boxes has 2"):
        track_people([np.zeros((0, 4))] * 2, keypoints=[np.zeros((0, 17, 3))])
    empty = track_people([[], np.zeros((0, 4))], keypoints=[[], []], features=[[], []])
    assert empty.tracks == {} and [len(i) for i in empty.track_ids] == [0, 0]
    with pytest.raises(ValueError, match="frame 0: keypoints"):
        track_people([np.zeros((2, 4))], keypoints=[np.zeros((1, 17, 3))])


def test_halpe26_extra_joints_and_xy_only_keypoints():
    _, kp = person(100, 100)
    rng = np.random.default_rng(4)
    extra = np.concatenate([kp, np.concatenate([rng.uniform(0, 500, (9, 2)), np.ones((9, 1))], 1)])
    other = extra.copy()
    other[17:, :2] = rng.uniform(0, 500, (9, 2))  # extra joints disagree completely
    from poselift.extract.tracking import PoseTracker
    sig = PoseTracker()._sigmas(26)
    assert oks_matrix(extra[None], other[None], np.array([W * H]), sig, 0.3)[0, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="pass sigmas"):
        PoseTracker()._sigmas(16)
    seq = [[("a", 50 + 4 * f, 200, DOWN), ("b", 300 - 4 * f, 200, UP)] for f in range(20)]
    boxes, kps, keys, _ = frames_of(seq, np.random.default_rng(5))
    res = track_people(boxes, [k[..., :2] for k in kps])  # (K, J, 2): every joint visible
    assert sorted(len(v) for v in id_consistency(res, keys).values()) == [1, 1]
