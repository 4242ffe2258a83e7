"""COCO keypoint AP/AR against hand-computed OKS cases and pycocotools; PoseTrack mAP; the CLI."""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest

from poselift.evaluation.keypoints2d import COCO_SIGMAS, OKS_THRESHOLDS, computeoks, evaluate_keypoints
from poselift.evaluation.posetrack import posetrack_map, voc_ap
from poselift.lifting.evaluate_cli import main as evaluate_main

_spec = importlib.util.spec_from_file_location("pose2d_synth", Path(__file__).with_name("pose2d_synth.py"))
synth = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synth)
write_coco, write_posetrack = synth.write_coco, synth.write_posetrack


def _results(gt: dict, noise: float = 0.0, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for a in gt["annotations"]:
        kp = np.asarray(a["keypoints"], float).reshape(-1, 3)
        kp[:, :2] += rng.normal(0, noise, kp[:, :2].shape) if noise else 0
        kp[:, 2] = 1.0
        out.append({"image_id": a["image_id"], "category_id": 1, "keypoints": kp.reshape(-1).tolist(),
                    "score": float(rng.uniform(0.5, 1))})
    return out


def test_perfect_predictions_give_ap_1(tmp_path: Path) -> None:
    gt = json.loads(write_coco(tmp_path, 5, persons=2).read_text())
    ev = evaluate_keypoints(gt, _results(gt))
    assert ev.stats["AP"] == pytest.approx(1.0) and ev.stats["AR"] == pytest.approx(1.0)
    assert ev.stats["AP50"] == pytest.approx(1.0) and ev.stats["APm"] == pytest.approx(1.0)
    assert ev.stats["APl"] == -1.0  # every person is medium (32^2 < area < 96^2)
    np.testing.assert_allclose(ev.per_joint, 1.0)


def test_hand_computed_oks_sets_the_ap() -> None:
    # One GT, one detection shifted by (3, 4) px: OKS = mean_i exp(-25 / (2 * area * (2 s_i)^2)).
    kp = np.zeros((17, 3))
    kp[:, 0], kp[:, 1], kp[:, 2] = np.arange(17) * 5.0, np.arange(17) * 7.0, 2
    area = 60.0 * 120.0
    gt = {"images": [{"id": 1}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "keypoints":
          kp.reshape(-1).tolist(), "bbox": [0, 0, 60, 120], "area": area, "iscrowd": 0, "num_keypoints": 17}]}
    det = kp.copy()
    det[:, :2] += [3.0, 4.0]
    oks = float(np.mean(np.exp(-25.0 / (2 * area * (2 * COCO_SIGMAS) ** 2))))
    assert computeoks(det[None], kp[None], np.array([[0, 0, 60, 120.0]]), np.array([area]),
                      COCO_SIGMAS)[0, 0] == pytest.approx(oks)
    ev = evaluate_keypoints(gt, [{"image_id": 1, "category_id": 1, "keypoints": det.reshape(-1).tolist(), "score": 1}])
    passed = np.count_nonzero(OKS_THRESHOLDS <= oks)
    assert 0 < passed < 10  # the shift lands between thresholds, so the case is informative
    assert ev.stats["AP"] == pytest.approx(passed / 10) and ev.stats["AR"] == pytest.approx(passed / 10)
    assert ev.stats["AP50"] == pytest.approx(1.0) and ev.stats["AP75"] == pytest.approx(float(oks >= 0.75))


def test_matches_pycocotools_on_noisy_crowded_case(tmp_path: Path) -> None:
    COCO = pytest.importorskip("pycocotools.coco").COCO
    COCOeval = pytest.importorskip("pycocotools.cocoeval").COCOeval
    gt = json.loads(write_coco(tmp_path, 6, persons=3, img_wh=(320, 240), size=60.0, seed=3).read_text())
    gt["annotations"][1]["iscrowd"] = 1
    gt["annotations"][4]["num_keypoints"] = 0
    gt["annotations"][4]["keypoints"] = [0.0] * 51
    gt["images"].append({"id": 99, "file_name": "empty.png", "width": 320, "height": 240})
    res = _results(gt, noise=3.0, seed=1)
    fp = copy.deepcopy(res[0])
    fp["keypoints"] = (np.asarray(fp["keypoints"]) + 40).tolist()
    fp["score"] = 0.99
    res += [fp, {**copy.deepcopy(res[2]), "image_id": 99, "score": 0.3}]
    ours = evaluate_keypoints(gt, res)
    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO()
        c.dataset = copy.deepcopy(gt)
        c.createIndex()
        e = COCOeval(c, c.loadRes(copy.deepcopy(res)), "keypoints")
        e.evaluate(), e.accumulate(), e.summarize()
    np.testing.assert_allclose(list(ours.stats.values()), e.stats, atol=1e-12)
    assert 0.2 < ours.stats["AP"] < 0.99


def test_posetrack_map_perfect_and_missed(tmp_path: Path) -> None:
    gt = json.loads(write_posetrack(tmp_path).read_text())
    preds = _results(gt)
    r = posetrack_map(gt, preds)
    assert r["total"] == pytest.approx(100.0) and set(r["groups"]) == {"head", "shoulder", "elbow", "wrist",
                                                                       "hip", "knee", "ankle"}
    # move every left wrist far away: its AP drops to 0, the group to 50
    for p in preds:
        p["keypoints"][9 * 3] += 500.0
    r = posetrack_map(gt, preds)
    assert r["per_joint"]["l_wrist"] == 0.0 and r["groups"]["wrist"] == pytest.approx(50.0)
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5])) == pytest.approx(0.75)


def test_evaluate_keypoints_cli_writes_json_md_png(tmp_path: Path) -> None:
    gt_path = write_coco(tmp_path, 3)
    pred = tmp_path / "res.json"
    pred.write_text(json.dumps(_results(json.loads(gt_path.read_text()), noise=1.0)))
    assert evaluate_main(["keypoints", "--gt", str(gt_path), "--pred", str(pred), "--out", str(tmp_path / "o")]) == 0
    res = json.loads((tmp_path / "o" / "keypoints_eval.json").read_text())
    assert list(res["stats"]) == ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]
    assert (tmp_path / "o" / "keypoints_per_joint.png").stat().st_size > 1000
    assert "AP50" in (tmp_path / "o" / "keypoints_eval.md").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 1, "keypoints": [0.0] * 51}]))
    assert evaluate_main(["keypoints", "--gt", str(gt_path), "--pred", str(bad), "--out", str(tmp_path / "o")]) == 2


def test_results_may_name_images_by_file(tmp_path: Path) -> None:
    gt = json.loads(write_coco(tmp_path, 3).read_text())
    res = _results(gt)
    for r in res:  # AlphaPose writes the frame's file name, e.g. "0001.png"
        r["image_id"] = Path(gt["images"][r["image_id"] - 1]["file_name"]).name
    assert evaluate_keypoints(gt, res).stats["AP"] == pytest.approx(1.0)
    res[0]["image_id"] = "nope.png"
    with pytest.raises(ValueError, match="nope.png"):
        evaluate_keypoints(gt, res)


def test_posetrack_ignore_regions_remove_predictions(tmp_path: Path) -> None:
    gt = json.loads(write_posetrack(tmp_path, n_videos=1, n_frames=2).read_text())
    preds = _results(gt)
    for p in preds:
        p["keypoints"] = (np.asarray(p["keypoints"]).reshape(17, 3) * [1, 1, 0.5]).reshape(-1).tolist()
    ghost = {"image_id": gt["images"][0]["id"], "keypoints": [500.0, 500.0, 1.0] * 17}  # confident FP
    assert posetrack_map(gt, preds + [ghost])["total"] < 99.0
    gt["images"][0]["ignore_regions_x"] = [[450, 550, 550, 450]]
    gt["images"][0]["ignore_regions_y"] = [[450, 450, 550, 550]]
    assert posetrack_map(gt, preds + [ghost])["total"] == pytest.approx(100.0)
