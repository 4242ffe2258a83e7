"""Pose-2D training data: COCO/Halpe/PoseTrack readers, AlphaPose augmentation, PGPG statistics."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from poselift.datasets.joints import COCO17
from poselift.extract.estimators.contracts import famipose_contract, fastpose_contract
from poselift.extract.training.augment import AugmentConfig
from poselift.extract.training.datasets import CocoKeypoints, PoseTrackKeypoints
from poselift.extract.training.pgpg import PGPG, box_offsets

_spec = importlib.util.spec_from_file_location("pose2d_synth", Path(__file__).with_name("pose2d_synth.py"))
synth = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synth)

C = fastpose_contract(input_size=(128, 96))
NO_AUG = AugmentConfig(enabled=False)


def _raw(ds, i: int) -> np.ndarray:
    """Un-normalised crop (H, W, 3) RGB of a sample (FastPose: x = rgb/255 - mean)."""
    x = ds[i]["image"].numpy().transpose(1, 2, 0)
    return (x + np.asarray(C.mean, np.float32)) * 255


def test_flip_twice_is_identity_and_mirrors_image(tmp_path: Path) -> None:
    ann = synth.write_coco(tmp_path, 2)
    plain = CocoKeypoints(ann, tmp_path, C, augment=NO_AUG)
    flip = CocoKeypoints(ann, tmp_path, C, augment=AugmentConfig(scale_std=0, rot_deg=0, flip_p=1, half_body_p=0))
    a, b = plain[0], flip[0]
    perm = COCO17.flip_permutation()
    w = C.crop_hw[1]
    np.testing.assert_allclose(b["joints"].numpy()[perm][:, 0], w - 1 - a["joints"].numpy()[:, 0], atol=1e-4)
    np.testing.assert_allclose(b["joints"].numpy()[perm][:, 1], a["joints"].numpy()[:, 1], atol=1e-4)
    np.testing.assert_allclose(_raw(flip, 0), _raw(plain, 0)[:, ::-1], atol=2.0)
    m = np.vstack([b["affine"].numpy(), [0, 0, 1]])
    twice = np.array([[-1.0, 0, w - 1], [0, 1, 0], [0, 0, 1]]) @ m
    np.testing.assert_allclose(twice[:2], a["affine"].numpy(), atol=1e-9)


def test_keypoints_follow_the_affine(tmp_path: Path) -> None:
    ann = synth.write_coco(tmp_path, 3, img_wh=(192, 256), size=200.0)
    ds = CocoKeypoints(ann, tmp_path, fastpose_contract(), augment=AugmentConfig(flip_p=0, half_body_p=0, rot_p=1.0))
    hits = total = 0
    for i in range(3):
        s = ds[i]
        x = s["image"].numpy().transpose(1, 2, 0)
        crop = (x + np.asarray(ds.contract.mean, np.float32)) * 255  # RGB
        for j in np.flatnonzero(s["visible"].numpy()):
            want = (np.array([j * 53, j * 97, j * 151]) % 200 + 55)[::-1]  # BGR colour -> RGB
            cx, cy = np.round(s["joints"].numpy()[j]).astype(int)
            hits += np.abs(crop[cy, cx] - want).max() < 40
            total += 1
    assert total >= 30 and hits / total > 0.8


def test_seeded_and_epoch_dependent(tmp_path: Path) -> None:
    ann = synth.write_coco(tmp_path, 2)
    a, b = CocoKeypoints(ann, tmp_path, C, seed=3), CocoKeypoints(ann, tmp_path, C, seed=3)
    assert np.array_equal(a[1]["joints"], b[1]["joints"]) and np.array_equal(a[1]["image"], b[1]["image"])
    b.set_epoch(1)
    assert not np.array_equal(a[1]["affine"], b[1]["affine"])


def test_bad_annotations_are_skipped_or_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ann = synth.write_coco(tmp_path, 4)
    d = json.loads(ann.read_text())
    d["annotations"][0]["iscrowd"] = 1
    d["annotations"][1]["bbox"][2] = 0.0
    (tmp_path / d["images"][2]["file_name"]).unlink()
    (tmp_path / d["images"][3]["file_name"]).write_bytes(b"not a png")
    ann.write_text(json.dumps(d))
    ds = CocoKeypoints(ann, tmp_path, C)
    assert ds.skipped == {"crowd": 1, "no_keypoints": 0, "zero_area": 1, "missing_image": 1}
    assert len(ds) == 1 and "0002.png" in caplog.text
    with pytest.raises(RuntimeError, match="no image"):
        ds[0]
    with pytest.raises(ValueError, match=r"annotations\[0\] has 17 keypoints, the model expects 26"):
        CocoKeypoints(ann, tmp_path, C, joint_set="halpe26")
    del d["annotations"][2]["bbox"]
    ann.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"annotations\[2\] missing field 'bbox'"):
        CocoKeypoints(ann, tmp_path, C)


def test_halpe_and_coco_into_halpe_model(tmp_path: Path) -> None:
    h = CocoKeypoints(synth.write_coco(tmp_path, 2, joint_set="halpe26"), tmp_path, C)
    assert h.joint_set == "halpe26" and h[0]["joints"].shape == (26, 2) and h[0]["label_mask"].min() == 1
    c = CocoKeypoints(synth.write_coco(tmp_path / "c", 2), tmp_path / "c", C, model_joint_set="halpe26")
    s = c[0]
    assert s["joints"].shape == (26, 2) and s["label_mask"].sum() == 17 and s["visible"][17:].sum() == 0
    w = CocoKeypoints(synth.write_coco(tmp_path / "w", 1, joint_set="halpe136"), tmp_path / "w", C,
                      model_joint_set="halpe26")  # Halpe-136 annotations train a Halpe-26 model
    assert w.joint_set == "halpe136" and w[0]["joints"].shape == (26, 2) and w[0]["label_mask"].min() == 1


def test_scale_and_rotation_ranges() -> None:
    from poselift.extract.training.augment import sample_affine

    rng = np.random.default_rng(0)
    kps = np.concatenate([synth.template(17) * 100, np.full((17, 1), 2.0)], 1)
    box = np.array([0, 0, 60, 100.0])
    base = C.crop_affine(box)
    cfg = AugmentConfig(scale_std=0.35, rot_deg=45, rot_p=1.0, flip_p=0, half_body_p=0)
    zooms, angles = [], []
    for _ in range(300):
        m, flip = sample_affine(box, kps, C, "coco17", cfg, rng)
        a = m[:, :2] @ np.linalg.inv(base[:, :2])  # the extra rotation-zoom on top of the crop
        zooms.append(np.sqrt(abs(np.linalg.det(a))))
        angles.append(np.degrees(np.arctan2(a[1, 0], a[0, 0])))
    s = 1 / np.array(zooms)
    assert s.min() >= 0.65 - 1e-9 and s.max() <= 1.35 + 1e-9 and s.std() > 0.2
    assert np.abs(angles).max() <= 90 + 1e-6 and np.std(angles) > 30


def test_posetrack_key_and_supporting_frames(tmp_path: Path) -> None:
    ann = synth.write_posetrack(tmp_path, n_videos=1, n_frames=5)
    ds = PoseTrackKeypoints(ann, tmp_path, famipose_contract(input_size=(64, 48)), augment=NO_AUG)
    assert len(ds) == 5
    s = ds[0]
    assert s["support"].shape == (4, 3, 64, 48) and s["joints"].shape == (17, 2)
    # key frame 0: supporting -2, -1 clamp to the key frame itself, +1, +2 are frames 1 and 2
    assert [Path(f).name for f in ds.samples[0]["files"]] == ["000000.jpg", "000000.jpg", "000000.jpg",
                                                               "000001.jpg", "000002.jpg"]
    assert np.array_equal(s["support"][0], s["image"]) and not np.array_equal(s["support"][3], s["image"])


def test_pgpg_statistics_per_atomic_pose() -> None:
    rng = np.random.default_rng(0)
    n, k = 400, 17
    t = synth.template(k)
    cls = rng.integers(0, 2, n)
    poses = np.where(cls[:, None, None] == 0, t, t[:, ::-1])[:, :, :] * 100 + rng.normal(0, 1.5, (n, k, 2))
    kps = np.concatenate([poses, np.full((n, k, 1), 2.0)], axis=2)
    gt = np.concatenate([kps[:, :, :2].min(1), kps[:, :, :2].max(1)], axis=1)
    true_mean = np.array([[0.05, -0.02, 0.1, 0.0], [-0.1, 0.03, -0.05, 0.02]])
    w = (gt[:, 2] - gt[:, 0])[:, None]
    h = (gt[:, 3] - gt[:, 1])[:, None]
    off = true_mean[cls] + rng.normal(0, 0.02, (n, 4))
    det = gt + off * np.concatenate([w, h, w, h], 1)
    np.testing.assert_allclose(box_offsets(gt, det), off, atol=1e-9)
    p = PGPG.fit(kps, gt, det, num_classes=2, seed=0, subpatch_p=0.0)
    pred = p.classify(kps, gt)
    perm = pred[cls == 0][0]
    assert np.mean(pred == np.where(cls == 0, perm, 1 - perm)) == 1.0
    np.testing.assert_allclose(p.mean[perm], true_mean[0], atol=0.006)
    np.testing.assert_allclose(p.mean[1 - perm], true_mean[1], atol=0.006)
    np.testing.assert_allclose(p.std, 0.02, atol=0.004)
    i = int(np.flatnonzero(cls == 1)[0])
    draws = np.array([p.sample(gt[i], kps[i], rng) for _ in range(2000)])
    got = box_offsets(np.repeat(gt[i:i + 1], 2000, 0), draws)
    np.testing.assert_allclose(got.mean(0), true_mean[1], atol=0.003)
    glob = PGPG.fit(kps, gt, None, num_classes=2)
    assert glob.mean.shape == (2, 4) and glob.std[0, 0] == pytest.approx(0.1158)


def test_match_detections_by_iou() -> None:
    from poselift.extract.training.pgpg import match_detections

    gt = np.array([[0, 0, 10, 20.0], [50, 50, 60, 70.0], [0, 0, 10, 10.0]])
    dets = [{"image_id": 1, "bbox": [1, 1, 10, 20], "score": 0.9},
            {"image_id": 1, "bbox": [30, 30, 5, 5], "score": 0.9},
            {"image_id": 2, "bbox": [50, 50, 10, 20], "score": 0.05}]
    m = match_detections(gt, [1, 2, 3], dets, min_iou=0.5, min_score=0.1)
    np.testing.assert_allclose(m[0], [1, 1, 11, 21])
    assert np.isnan(m[1]).all() and np.isnan(m[2]).all()  # low score dropped; no detection in image 3
    with pytest.raises(ValueError, match=r"detections\[0\]"):
        match_detections(gt, [1, 2, 3], [{"bbox": [0, 0, 1, 1]}])


def test_posetrack_needs_video_ids(tmp_path: Path) -> None:
    ann = synth.write_posetrack(tmp_path, n_videos=1, n_frames=2)
    d = json.loads(ann.read_text())
    del d["images"][1]["vid_id"]
    ann.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"posetrack_train.json: images\[1\] missing field 'vid_id'"):
        PoseTrackKeypoints(ann, tmp_path, famipose_contract(input_size=(64, 48)))


def test_worker_decoding_gives_the_same_samples(tmp_path: Path) -> None:
    import torch

    ds = CocoKeypoints(synth.write_coco(tmp_path, 4), tmp_path, C, seed=5)
    ds.set_epoch(2)
    runs = [list(torch.utils.data.DataLoader(ds, batch_size=2, num_workers=w)) for w in (0, 2)]
    for a, b in zip(*runs):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["joints"], b["joints"])
