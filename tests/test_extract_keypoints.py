"""Keypoint extraction: contracts, decode conventions, SIKR / FAMI-Pose into keypoints2d caches,
multi-person (P-NMS, tracks), failures, resume and the CLI, on real mp4v videos made here."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from poselift.datasets.cache import Cache
from poselift.extract.backbones import file_sha256
from poselift.extract.cli import main
from poselift.extract.contracts import PreprocessContract
from poselift.extract.crops import square_crop_affine
from poselift.extract.detections import IoUTracker, VideoDetections, detections_from_tracks, split_tracks
from poselift.extract.estimators.contracts import FASTPOSE_CONTRACT, famipose_contract, fastpose_contract
from poselift.extract.estimators.famipose import FAMIPose, FamiConfig, supporting_indices
from poselift.extract.estimators.fastpose import FastPose
from poselift.extract.estimators.hrnet import HRNet
from poselift.extract.estimators.sikr import crop_to_image, sikr_decode
from poselift.extract.features import SequenceSpec
from poselift.extract.keypoint_runners import fami_decode
from poselift.extract.keypoints import extract_keypoints

SIKR_C = fastpose_contract(input_size=(64, 48))
FAMI_C = famipose_contract(input_size=(64, 64))
N_FRAMES, W, H = 8, 160, 120


def tiny_fastpose(seed: int = 0) -> FastPose:
    torch.manual_seed(seed)
    return FastPose(17, stem=8, widths=(16, 32, 64, 128), layers=(1, 1, 1, 1), duc1_out=64, duc2_out=32).eval()


def tiny_fami(seed: int = 0) -> FAMIPose:
    torch.manual_seed(seed)
    return FAMIPose(HRNet(width=12, num_joints=17), 17, FamiConfig(feature_size=(16, 16))).eval()


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("vid") / "clip.mp4"
    vw = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (W, H))
    assert vw.isOpened()
    rng = np.random.default_rng(0)
    for i in range(N_FRAMES):
        f = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        cv2.rectangle(f, (30 + 2 * i, 20), (70 + 2 * i, 100), (20, 200, 40), -1)
        vw.write(f)
    vw.release()
    return p


def frames_of(p: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(p))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            return out
        out.append(f)


def person_boxes(dx: float = 0.0) -> np.ndarray:
    return np.array([[30 + 2 * i + dx, 20, 70 + 2 * i + dx, 100] for i in range(N_FRAMES)], np.float32)


# -- contract: one class, one convention -------------------------------------------------------
def test_contract_unified_convention_and_roundtrip() -> None:
    c = FASTPOSE_CONTRACT
    assert c.value_scale == 255.0 and c.std is None and c.crop_hw == (256, 192) and c.heatmap_size == (64, 48)
    img = np.random.default_rng(1).integers(0, 256, (2, 256, 192, 3), dtype=np.uint8)
    t = c.normalize(torch.from_numpy(img[..., ::-1].copy()), rgb_input=False)
    np.testing.assert_allclose(t.numpy(), c.normalize_numpy(img), atol=1e-6)
    np.testing.assert_allclose(c.normalize_numpy(img)[0, :, 5, 7], img[0, 5, 7] / 255.0 - np.array(c.mean), atol=1e-6)
    assert PreprocessContract.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    # square mode is the TCMR crop, bit for bit
    sq = PreprocessContract(crop_size=96, bbox_scale=1.2)
    box = np.array([10.0, 20.0, 50.0, 100.0])
    np.testing.assert_array_equal(sq.crop_affine(box), square_crop_affine(box, scale=1.2, out_size=96))
    # aspect mode: crop-box corners go to the crop corners, decode inverts the crop exactly
    rng = np.random.default_rng(2)
    for _ in range(20):
        x0, y0 = rng.uniform(-50, 300, 2)
        b = np.array([x0, y0, x0 + rng.uniform(5, 200), y0 + rng.uniform(5, 200)])
        m, cb = c.crop_affine(b), c.crop_box(b)[0]
        np.testing.assert_allclose(m @ [cb[0], cb[1], 1], [0, 0], atol=1e-3)
        np.testing.assert_allclose(m @ [cb[2], cb[3], 1], [192, 256], atol=1e-3)
        p = rng.uniform(-20, 300, (1, 5, 2))
        crop_px = p[0] @ m[:, :2].T + m[:, 2]
        back = crop_to_image(crop_px[None] / 4.0, cb[None], (64, 48))
        np.testing.assert_allclose(back, p, atol=2e-3)


def test_fami_decode_quarter_offset_and_reference_bounds() -> None:
    hm = torch.zeros(1, 3, 10, 8)
    hm[0, 0, 4, 5], hm[0, 0, 4, 6], hm[0, 0, 3, 5] = 1.0, 0.5, 0.2   # right / up higher
    hm[0, 1, 5, 1], hm[0, 1, 5, 2] = 1.0, 0.9                          # px = 1: no shift
    hm[0, 2] = -1.0                                                     # peak <= 0 -> (0, 0)
    cells, peak = fami_decode(hm)
    np.testing.assert_allclose(cells[0], [[5.25, 3.75], [1.0, 5.0], [0.0, 0.0]])
    np.testing.assert_allclose(peak[0], [1.0, 1.0, -1.0])


# -- SIKR single person ------------------------------------------------------------------------
def by_hand_sikr(model: FastPose, frames: list[np.ndarray], box: np.ndarray, c: PreprocessContract):
    h, w = c.crop_hw
    crop = cv2.warpAffine(frames, c.crop_affine(box), (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    x = torch.from_numpy(c.normalize_numpy(crop[None, ..., ::-1].copy()))
    with torch.no_grad():
        kp, sc = sikr_decode(model(x), c.crop_box(box))
    return kp[0], sc[0, :, 0]


def test_sikr_single_person_matches_by_hand(video: Path, tmp_path: Path) -> None:
    m = tiny_fastpose()
    boxes = person_boxes()
    boxes[3] = np.nan  # no detection
    boxes[5] = [500, 500, 540, 580]  # crop outside the image
    out = tmp_path / "kp.h5"
    r = extract_keypoints([SequenceSpec("s1", video, boxes)], out, m, SIKR_C, batch_size=3,
                          weights_sha256="sha-x", progress=False)
    assert r.written == ["s1"] and r.frames == N_FRAMES and r.invalid_frames == 2
    frames = frames_of(video)
    with Cache(out) as c:
        assert c.header.kind == "keypoints2d" and c.header.joint_set == "coco17"
        assert c.header.source["weights_sha256"] == "sha-x" and c.header.source["contract"] == SIKR_C.to_dict()
        kp, sc, valid = c.read("s1", "keypoints"), c.read("s1", "scores"), c.read("s1", "valid")
        assert kp.shape == (N_FRAMES, 17, 2) and valid.tolist() == [i not in (3, 5) for i in range(N_FRAMES)]
        np.testing.assert_array_equal(c.read("s1", "frame_index"), np.arange(N_FRAMES))
        assert np.isnan(c.read("s1", "boxes")[3]).all() and (kp[3] == 0).all()
        np.testing.assert_allclose(c.read("s1", "crop_boxes")[0], SIKR_C.crop_box(boxes[0])[0])
        for i in (0, 4, 7):
            ekp, esc = by_hand_sikr(m, frames[i], boxes[i], SIKR_C)
            np.testing.assert_allclose(kp[i], ekp, atol=1e-3)
            np.testing.assert_allclose(sc[i], esc, atol=1e-5)
    # resume: nothing left to do
    r2 = extract_keypoints([SequenceSpec("s1", video, boxes)], out, m, SIKR_C, weights_sha256="sha-x", progress=False)
    assert r2.skipped == ["s1"] and r2.written == []


def test_failing_video_is_reported_and_others_continue(video: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    specs = [SequenceSpec("bad", bad, person_boxes()), SequenceSpec("good", video, person_boxes())]
    r = extract_keypoints(specs, tmp_path / "kp.h5", tiny_fastpose(), SIKR_C, weights_sha256="x", progress=False)
    assert r.written == ["good"] and "broken.mp4" in r.failed["bad"]
    with pytest.raises(ValueError, match="weights_sha256"):
        extract_keypoints(specs, tmp_path / "k2.h5", tiny_fastpose(), SIKR_C, progress=False)


# -- multi-person ------------------------------------------------------------------------------
def test_iou_tracker_follows_boxes_and_expires() -> None:
    tr = IoUTracker(iou_thresh=0.3, max_age=2)
    a, b = [0, 0, 10, 10], [50, 50, 60, 60]
    assert tr.update(0, np.array([a, b])).tolist() == [0, 1]
    assert tr.update(1, np.array([[51, 50, 61, 60], [1, 0, 11, 10]])).tolist() == [1, 0]
    assert tr.update(5, np.array([a])).tolist() == [2]  # both tracks expired (gap 4 > max_age 2)


def test_multi_person_pose_nms_and_tracks(video: Path, tmp_path: Path) -> None:
    m = tiny_fastpose()
    a, b = person_boxes(), person_boxes(dx=70)
    dup = a + np.array([1, 0, 1, 0], np.float32)  # near-duplicate detection of person A
    frames = np.repeat(np.arange(N_FRAMES), 3)
    boxes = np.stack([a, b, dup], 1).reshape(-1, 4)
    scores = np.tile([0.9, 0.8, 0.5], N_FRAMES).astype(np.float32)
    det = detections_from_tracks("clip", video, N_FRAMES, frames, boxes, scores)
    r = extract_keypoints([det], tmp_path / "nms.h5", m, SIKR_C, weights_sha256="x", progress=False)
    assert sorted(r.written) == ["clip/track0", "clip/track1"]
    with Cache(tmp_path / "nms.h5") as c:
        got = c.read("clip/track0", "boxes")  # P-NMS keeps the higher mean keypoint score
        assert all(np.allclose(g, x) or np.allclose(g, y) for g, x, y in zip(got, a, dup))
        np.testing.assert_allclose(c.read("clip/track1", "boxes"), b)
        assert c.read("clip/track1", "track_id").tolist() == [1] * N_FRAMES
        ps = c.read("clip/track0", "proposal_score")
        sc = c.read("clip/track0", "scores")
        assert np.all(ps >= 0.9 + sc.mean(1) - 1e-4)  # mean + box score + 1.25 max
    # without P-NMS the duplicate becomes its own track
    r = extract_keypoints([det], tmp_path / "raw.h5", m, SIKR_C, weights_sha256="x", use_pose_nms=False,
                          progress=False)
    assert len(r.written) == 3
    # file track ids: P-NMS off, ids kept, a track appearing late starts there
    tids = np.tile([4, 7, 9], N_FRAMES)
    keep = (tids != 9) | (frames >= 5)
    det2 = detections_from_tracks("clip", video, N_FRAMES, frames[keep], boxes[keep], scores[keep], tids[keep])
    r = extract_keypoints([det2], tmp_path / "trk.h5", m, SIKR_C, weights_sha256="x", progress=False)
    assert sorted(r.written) == ["clip/track4", "clip/track7", "clip/track9"]
    with Cache(tmp_path / "trk.h5") as c:
        np.testing.assert_array_equal(c.read("clip/track9", "frame_index"), [5, 6, 7])


# -- FAMI-Pose ---------------------------------------------------------------------------------
def by_hand_fami(m: FAMIPose, frames: list[np.ndarray], key: int, box: np.ndarray, c: PreprocessContract):
    h, w = c.crop_hw
    mat = c.crop_affine(box)
    idx = [key] + supporting_indices(key, len(frames))
    crops = np.stack([cv2.warpAffine(frames[i], mat, (w, h), flags=cv2.INTER_LINEAR) for i in idx])
    x = torch.from_numpy(c.normalize_numpy(crops[..., ::-1].copy()))
    torch.set_flush_denormal(True)  # a random HRNet makes subnormals: 10x slower without this
    try:
        with torch.no_grad():
            hm = m(x[:1], x[1:][None]).heatmaps
    finally:
        torch.set_flush_denormal(False)
    cells, peak = fami_decode(hm)
    return crop_to_image(cells, c.crop_box(box), hm.shape[-2:])[0], peak[0]


def test_famipose_reference_and_tube_modes_match_by_hand(video: Path, tmp_path: Path) -> None:
    m = tiny_fami()
    boxes = person_boxes()
    frames = frames_of(video)
    calls = []
    orig = m.hrnet.forward_features
    m.hrnet.forward_features = lambda x: (calls.append(x.shape[0]), orig(x))[1]
    r = extract_keypoints([SequenceSpec("f", video, boxes)], tmp_path / "f1.h5", m, FAMI_C, batch_size=4,
                          tube_length=1, weights_sha256="x", progress=False)
    n_exact, calls[:] = sum(calls), []
    assert r.written == ["f"]
    with Cache(tmp_path / "f1.h5") as c:
        assert c.header.joint_set == "posetrack17"
        kp, sc = c.read("f", "keypoints"), c.read("f", "scores")
        for k in (0, 3, 7):  # borders use the reference policy
            ekp, esc = by_hand_fami(m, frames, k, boxes[k], FAMI_C)
            np.testing.assert_allclose(kp[k], ekp, atol=1e-3)
            np.testing.assert_allclose(sc[k], esc, atol=1e-5)
    calls[:] = []
    extract_keypoints([SequenceSpec("f", video, boxes)], tmp_path / "f4.h5", m, FAMI_C, batch_size=4,
                      tube_length=4, weights_sha256="x", progress=False)
    n_tube = sum(calls)
    # reference: 5 crops per key frame, repeated border frames cropped once (3+4+5*4+4+3);
    # tube of 4: each window crops its frames plus the +-2 reach once (6 + 6)
    assert n_exact == 34 and n_tube == 12
    with Cache(tmp_path / "f4.h5") as c:
        kp = c.read("f", "keypoints")
        wbox = np.concatenate([boxes[4:8, :2].min(0), boxes[4:8, 2:].max(0)])
        np.testing.assert_allclose(c.read("f", "crop_boxes")[5], FAMI_C.crop_box(wbox)[0])
        ekp, _ = by_hand_fami(m, frames, 5, wbox, FAMI_C)
        np.testing.assert_allclose(kp[5], ekp, atol=1e-3)


def test_split_tracks_for_fami_tubes(video: Path) -> None:
    a, b = person_boxes(), person_boxes(dx=70)
    frames = np.concatenate([np.arange(N_FRAMES), np.arange(2, N_FRAMES)])
    boxes = np.concatenate([a, b[2:]])
    order = np.argsort(frames, kind="stable")
    det = VideoDetections("v", video, np.arange(N_FRAMES), frames[order], boxes[order],
                          np.ones(len(order)), -np.ones(len(order)))
    (t0, p0, b0), (t1, p1, b1) = split_tracks(det)
    assert (t0, t1) == (0, 1) and p1.tolist() == list(range(2, N_FRAMES))
    np.testing.assert_allclose(b1, b[2:])


# -- CLI ---------------------------------------------------------------------------------------
def test_cli_keypoints_from_detection_json(video: Path, tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "fastpose.pth"
    torch.save(tiny_fastpose().state_dict(), ckpt)
    dets = [{"image_id": f"{i:06d}.jpg", "category_id": 1, "bbox": [30 + 2 * i + dx, 20, 40, 80], "score": 0.9}
            for i in range(N_FRAMES) for dx in (0, 70)]
    (tmp_path / "det.json").write_text(json.dumps(dets))
    out = tmp_path / "out.h5"
    args = ["keypoints", str(out), "--estimator", "sikr", "--weights", str(ckpt), "--video", str(video),
            "--boxes", str(tmp_path / "det.json"), "--box-format", "coco", "--input-size", "64", "48",
            "--workers", "1", "--batch-size", "4", "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    with Cache(out) as c:
        assert c.ids == ["clip/track0", "clip/track1"]
        assert c.header.source["weights_sha256"] == file_sha256(ckpt)
        assert c.header.source["pose_nms"]["gamma"] == 22.48
    sd = tiny_fastpose().state_dict()
    sd.pop("duc2.bn.running_mean")
    torch.save(sd, ckpt)
    assert main(args[:1] + [str(tmp_path / "o2.h5")] + args[2:]) == 2
    err = capsys.readouterr().err
    assert "duc2.bn.running_mean" in err and "fastpose.pth" in err


def test_cli_keypoints_results_json_matches_the_cache(video: Path, tmp_path: Path) -> None:
    """--results-json writes every valid cache row as one AlphaPose entry: same pixels, scores,
    boxes (xywh) and track ids, readable by the keypoint evaluator's result loader."""
    from poselift.evaluation.keypoints2d import load_results

    ckpt = tmp_path / "fastpose.pth"
    torch.save(tiny_fastpose().state_dict(), ckpt)
    dets = [{"image_id": f"{i:06d}.jpg", "category_id": 1, "bbox": [30 + 2 * i + dx, 20, 40, 80], "score": 0.9}
            for i in range(N_FRAMES) for dx in (0, 70)]
    (tmp_path / "det.json").write_text(json.dumps(dets))
    out, res = tmp_path / "out.h5", tmp_path / "alphapose-results.json"
    args = ["keypoints", str(out), "--estimator", "sikr", "--weights", str(ckpt), "--video", str(video),
            "--boxes", str(tmp_path / "det.json"), "--box-format", "coco", "--input-size", "64", "48",
            "--workers", "0", "--batch-size", "4", "--no-progress", "--device", "cpu",
            "--results-json", str(res)]
    assert main(args) == 0
    entries = json.loads(res.read_text())
    by_img = load_results(res)
    with Cache(out) as c:
        rows = []
        for sid in c.ids:
            valid = c.read(sid, "valid")
            for i in np.flatnonzero(valid):
                rows.append((sid, i))
        assert len(entries) == len(rows) > 0
        assert sum(len(v) for v in by_img.values()) == len(rows)
        sid, i = rows[-1]
        f = int(c.read(sid, "frame_index")[i])
        kp, sc, box = c.read(sid, "keypoints")[i], c.read(sid, "scores")[i], c.read(sid, "boxes")[i]
        tid = int(c.read(sid, "track_id")[i])
    mine = [e for e in by_img[f"{f}.jpg"] if e["idx"] == tid]
    assert len(mine) == 1
    e = mine[0]
    flat = np.asarray(e["keypoints"]).reshape(-1, 3)
    np.testing.assert_allclose(flat[:, :2], kp, atol=2e-3)
    np.testing.assert_allclose(flat[:, 2], sc, atol=2e-3)
    np.testing.assert_allclose(e["box"], [box[0], box[1], box[2] - box[0], box[3] - box[1]], atol=0.02)
    assert e["category_id"] == 1 and np.isfinite(e["score"])
    frames = [int(x["image_id"].split(".")[0]) for x in entries]
    assert frames == sorted(frames)


def test_sikr_bf16_is_recorded_close_to_fp32_and_not_mixed_on_resume(video: Path, tmp_path: Path) -> None:
    from poselift.datasets.cache.schema import CacheMismatchError

    m, boxes = tiny_fastpose(), person_boxes()
    kw = dict(weights_sha256="sha-x", progress=False)
    extract_keypoints([SequenceSpec("s1", video, boxes)], tmp_path / "fp32.h5", m, SIKR_C, **kw)
    extract_keypoints([SequenceSpec("s1", video, boxes)], tmp_path / "bf16.h5", m, SIKR_C,
                      precision="bf16", **kw)
    with Cache(tmp_path / "fp32.h5") as a, Cache(tmp_path / "bf16.h5") as b:
        assert a.header.source["precision"] == {"resolved": "fp32", "autocast_dtype": None}
        assert b.header.source["precision"] == {"resolved": "bf16", "autocast_dtype": "bfloat16"}
        ka, kb = a.read("s1", "keypoints"), b.read("s1", "keypoints")
        # bf16 keeps 8 mantissa bits: the soft-argmax moves by a fraction of a pixel, not more.
        assert 0 < np.abs(ka - kb).max() < 2.0
    # The same cache resumed in another precision is refused, never mixed.
    with pytest.raises(CacheMismatchError, match="precision"):
        extract_keypoints([SequenceSpec("s1", video, boxes), SequenceSpec("s2", video, boxes)],
                          tmp_path / "bf16.h5", m, SIKR_C, **kw)
