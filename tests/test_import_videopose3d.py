"""VideoPose3D npz files -> caches: formats, joint reduction, cameras, errors, protocols, CLI."""
from __future__ import annotations

import importlib.util

import fractions
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from poselift.datasets.cache import Cache, CacheMismatchError
from poselift.datasets.cameras import (CAMERA_JSON, Camera, camera_to_world,
                                       normalize_screen_coordinates, project_to_2d)
from poselift.datasets.importers.cli import build_parser, main
from poselift.datasets.importers.safe_npz import UnsafePickleError, load_npz_member
from poselift.datasets.importers.videopose3d import (VideoPose3DImportError,
                                                     import_videopose3d)
from poselift.datasets.joints import H36M32_TO_17
from poselift.datasets.protocols import (PROTOCOLS, deterministic_random, select,
                                         select_sequences, subset_slice)

_spec = importlib.util.spec_from_file_location("vp3d_synth", Path(__file__).with_name("vp3d_synth.py"))
_synth = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_synth)

RAW = json.loads(CAMERA_JSON.read_text())
H36M_SYM = [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]
HE_SYM = [[2, 3, 4, 8, 9, 10], [5, 6, 7, 11, 12, 13]]
COCO_SYM = [[1, 3, 5, 7, 9, 11, 13, 15], [2, 4, 6, 8, 10, 12, 14, 16]]
# subject -> {action: frames}; S11 Directions must be dropped, Walking 1 has longer 2D.
H36M_TAKES = {"S1": {"Walking 1": 7, "WalkDog": 5, "Directions": 4}, "S9": {"Eating": 6},
              "S11": {"Directions": 5, "Walking": 6}}
EXTRA_2D = {("S1", "Walking 1"): 3}


def _world(rng: np.random.Generator, t: int, j: int) -> np.ndarray:
    return rng.uniform([-0.8, -0.8, 0.0], [0.8, 0.8, 1.8], size=(t, j, 3)).astype(np.float32)


def _h36m_files(d: Path, takes=H36M_TAKES, extra=EXTRA_2D, meta=None) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    pos3d, pos2d = {}, {}
    for subject, actions in takes.items():
        pos3d[subject], pos2d[subject] = {}, {}
        for action, t in actions.items():
            world = _world(rng, t + extra.get((subject, action), 0), 32)
            pos3d[subject][action] = world[:t]
            pos2d[subject][action] = [
                _synth.h36m_pixels(_synth.world_to_cam(world[:, list(H36M32_TO_17)], ext), intr)
                for intr, ext in zip(RAW["h36m"]["intrinsic"], RAW["h36m"]["extrinsic"][subject])]
    p3, p2 = d / "data_3d_h36m.npz", d / "data_2d_h36m_gt.npz"
    np.savez_compressed(p3, positions_3d=pos3d)
    # Like the reference's ground-truth 2D file: no layout_name in the metadata.
    np.savez_compressed(p2, positions_2d=pos2d,
                        metadata=meta or {"num_joints": 17, "keypoints_symmetry": H36M_SYM})
    return p3, p2


def _humaneva_files(d: Path, unlabeled: bool = True) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    takes = {"Train/S1": {"Walking 1 chunk0": 6, "Box 1 chunk0": 5},
             "Validate/S1": {"Walking 1 chunk0": 4, "Jog 1 chunk2": 5, "Gestures 1 chunk0": 3}}
    pos3d = {s: {a: _world(rng, t, 15) for a, t in acts.items()} for s, acts in takes.items()}
    pos2d = {s: {a: [rng.uniform(0, 480, size=(len(x), 15, 2)).astype(np.float32)
                     for _ in range(3)] for a, x in acts.items()} for s, acts in pos3d.items()}
    if unlabeled:
        arr = rng.uniform(0, 480, size=(8, 15, 2)).astype(np.float32)
        pos2d["Unlabeled/Train/S1"] = {"Walking 1 chunk1": [arr, None, arr + 1]}
    p3, p2 = d / "data_3d_humaneva15.npz", d / "data_2d_humaneva15_gt.npz"
    np.savez(p3, positions_3d=pos3d)
    np.savez(p2, positions_2d=pos2d, metadata={"layout_name": "humaneva15", "num_joints": 15,
                                               "keypoints_symmetry": HE_SYM})
    return p3, p2


@pytest.fixture(scope="module")
def h36m(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("h36m")
    p3, p2 = _h36m_files(d)
    report = import_videopose3d(p3, [p2], "h36m", d / "out")
    return {"dir": d, "p3": p3, "p2": p2, "report": report,
            "gt": Cache(report.gt_path, kind="gt", joint_set="h36m17"),
            "kp": Cache(report.keypoint_paths["gt"], kind="keypoints2d", joint_set="h36m17")}


def test_h36m_ids_joint_reduction_and_discard(h36m) -> None:
    gt, rep = h36m["gt"], h36m["report"]
    cams = [c["id"] for c in RAW["h36m"]["intrinsic"]]
    takes = [(s, a) for s, acts in H36M_TAKES.items() for a in acts if (s, a) != ("S11", "Directions")]
    assert gt.ids == sorted(f"{s}/{a}/{c}" for s, a in takes for c in cams)
    assert h36m["kp"].ids == gt.ids
    assert rep.discarded == ["S11/Directions"] and gt.header.extra["discarded"] == ["S11/Directions"]
    assert rep.sequences == 5 * 4 and rep.truncated == {"gt": 4}
    world32 = load_npz_member(h36m["p3"], "positions_3d")["S1"]["Walking 1"]
    sid = "S1/Walking 1/55011271"
    info = gt.info(sid)
    assert (info.subject, info.action, info.camera, info.attrs["fps"]) == ("S1", "Walking 1", "55011271", 50.0)
    assert info.attrs["image_size"] == [1000, 1000] and info.attrs["camera_index"] == 1
    j3w, j3 = gt.read(sid, "joints_3d_world"), gt.read(sid, "joints_3d")
    assert j3.shape == (7, 17, 3) and j3.dtype == np.float32
    np.testing.assert_array_equal(j3w, world32[:, list(H36M32_TO_17)])
    ext = RAW["h36m"]["extrinsic"]["S1"][1]
    np.testing.assert_allclose(j3, _synth.world_to_cam(j3w, ext), atol=2e-6)  # absolute, not root-relative
    cam = Camera.from_attrs(info.attrs["camera_params"])
    np.testing.assert_allclose(camera_to_world(j3, cam.orientation, cam.translation), j3w, atol=2e-6)


def test_h36m_2d_truncated_pixels_round_trip_projection(h36m) -> None:
    kp, gt = h36m["kp"], h36m["gt"]
    assert kp.header.joint_set == "h36m17"  # inferred: the gt metadata has no layout_name
    assert kp.header.extra["keypoints_symmetry"] == H36M_SYM
    sid = "S1/Walking 1/54138969"
    assert kp.info(sid).n_frames == 7 and kp.info(sid).attrs["source_n_frames"] == 10
    for sid in gt.ids:
        info = kp.info(sid)
        w, h = info.attrs["image_size"]
        cam = Camera.from_attrs(info.attrs["camera_params"])
        pred = project_to_2d(gt.read(sid, "joints_3d")[None], cam.intrinsic[None])[0]
        norm = normalize_screen_coordinates(kp.read(sid, "keypoints"), w, h)
        np.testing.assert_allclose(pred, norm, atol=1e-4)


def test_fingerprint_resume_and_changed_input(h36m, tmp_path) -> None:
    gt = h36m["gt"]
    files = gt.header.source["files"]
    assert files["data_3d_h36m.npz"] == hashlib.sha256(h36m["p3"].read_bytes()).hexdigest()
    assert files[CAMERA_JSON.name] == hashlib.sha256(CAMERA_JSON.read_bytes()).hexdigest()
    assert h36m["kp"].header.source["files"]["data_2d_h36m_gt.npz"] == hashlib.sha256(
        h36m["p2"].read_bytes()).hexdigest()
    again = import_videopose3d(h36m["p3"], [h36m["p2"]], "h36m", h36m["dir"] / "out")
    assert Cache(again.gt_path).content_fingerprint == gt.content_fingerprint
    # A different 3D file into the same folder is refused (content check), not mixed in.
    p3b, _ = _h36m_files(tmp_path, takes={"S1": {"Walking 1": 6}}, extra={})
    with pytest.raises(CacheMismatchError, match="inputs_fingerprint"):
        import_videopose3d(p3b, [], "h36m", h36m["dir"] / "out")


def test_humaneva_import_and_only_2d_policies(tmp_path) -> None:
    p3, p2 = _humaneva_files(tmp_path)
    with pytest.raises(VideoPose3DImportError, match=r"Unlabeled/Train/S1/Walking 1 chunk1.*--only-2d"):
        import_videopose3d(p3, [p2], "humaneva15", tmp_path / "err")
    rep = import_videopose3d(p3, [p2], "humaneva15", tmp_path / "keep", only_in_2d="keep")
    gt, kp = Cache(rep.gt_path, joint_set="humaneva15"), Cache(rep.keypoint_paths["gt"])
    assert "Train/S1/Walking 1 chunk0/cam0" in gt.ids and len(gt.ids) == 5 * 3
    assert set(kp.ids) - set(gt.ids) == {"Unlabeled/Train/S1/Walking 1 chunk1/cam0",
                                         "Unlabeled/Train/S1/Walking 1 chunk1/cam2"}
    info = gt.info("Validate/S1/Jog 1 chunk2/cam1")
    assert info.attrs["fps"] == 60.0 and info.attrs["image_size"] == [640, 480]
    assert info.attrs["camera_params"]["intrinsic"] is None and info.attrs["camera_params"]["id"] == "C2"
    ext = RAW["humaneva"]["extrinsic"]["S1"][1]
    np.testing.assert_allclose(gt.read(info.seq_id, "joints_3d"),
                               _synth.world_to_cam(gt.read(info.seq_id, "joints_3d_world"), ext), atol=2e-6)
    skip = import_videopose3d(p3, [p2], "humaneva15", tmp_path / "skip", only_in_2d="skip")
    assert Cache(skip.keypoint_paths["gt"]).ids == gt.ids
    # Protocol: README HumanEva recipe (Walk, Jog, Box; Gestures excluded), by subject.
    he = PROTOCOLS["humaneva15"]
    assert he.by_subject and he.actions == ("Walk", "Jog", "Box")
    test_ids = select_sequences(gt, he.test_subjects, he.actions)
    assert test_ids == [f"Validate/S1/{a}/cam{i}" for a in ("Jog 1 chunk2", "Walking 1 chunk0")
                        for i in range(3)]
    assert len(select_sequences(gt, he.train_subjects, he.actions)) == 6


def test_h36m_protocol_selection_prefix_and_subset(h36m) -> None:
    gt = h36m["gt"]
    p = PROTOCOLS["h36m"]
    assert p.train_subjects == ("S1", "S5", "S6", "S7", "S8") and p.test_subjects == ("S9", "S11")
    ids = select_sequences(gt, ["S11", "S1"], ["Walk"])  # prefix: Walking 1, WalkDog, Walking
    assert [i.split("/")[:2] for i in ids[::4]] == [["S11", "Walking"], ["S1", "WalkDog"],
                                                    ["S1", "Walking 1"]]
    sel = select(gt, ["S1"], ["Walking"], subset=0.5)
    t = 7
    n = int(round(t // 1 * 0.5) * 1)
    start = deterministic_random(0, t - n + 1, str(t))
    assert all(s.frames == slice(start, start + n, 1) and s.n_frames == n for s in sel)


def test_subset_slice_reference_semantics() -> None:
    digest = hashlib.sha256(b"1000").digest()[:4]
    assert deterministic_random(0, 901, "1000") == int(int.from_bytes(digest, "little") / (2 ** 32 - 1) * 901)
    assert subset_slice(1000, 0.1) == slice(deterministic_random(0, 901, "1000"),
                                            deterministic_random(0, 901, "1000") + 100, 1)
    sl = subset_slice(1001, 0.1, downsample=2)  # n = round(500 * 0.1) * 2 = 100 frames, step 2
    assert sl.stop - sl.start == 100 and sl.step == 2 and len(range(1001)[sl]) == 50
    assert subset_slice(10, 1.0, downsample=3) == slice(0, 10, 3)
    assert subset_slice(500, 0.2) == subset_slice(500, 0.2)  # a pure function of the length
    with pytest.raises(ValueError, match="subset"):
        subset_slice(10, 0.0)


def test_custom_2d_import(tmp_path) -> None:
    rng = np.random.default_rng(3)
    pos = {"vidA": {"custom": [rng.uniform(0, 1000, (9, 17, 2)).astype(np.float32)]},
           "vidB": {"custom": [rng.uniform(0, 600, (4, 17, 2)).astype(np.float32)]}}
    meta = {"layout_name": "coco", "num_joints": 17, "keypoints_symmetry": COCO_SYM,
            "video_metadata": {"vidA": {"w": 1920, "h": 1080}, "vidB": {"w": 640, "h": 360}}}
    p2 = tmp_path / "data_2d_custom_myvideos.npz"
    np.savez_compressed(p2, positions_2d=pos, metadata=meta)
    rep = import_videopose3d(None, [p2], "custom", tmp_path / "out")
    kp = Cache(rep.keypoint_paths["myvideos"], kind="keypoints2d", joint_set="coco17")
    assert rep.gt_path is None and kp.path.name == "custom_myvideos.h5"
    assert kp.ids == ["vidA/custom/cam0", "vidB/custom/cam0"]
    assert kp.info("vidB/custom/cam0").attrs["image_size"] == [640, 360]
    assert "fps" not in kp.info("vidA/custom/cam0").attrs
    np.testing.assert_array_equal(kp.read("vidA/custom/cam0", "keypoints"), pos["vidA"]["custom"][0])
    del meta["video_metadata"]["vidB"]
    np.savez_compressed(p2, positions_2d=pos, metadata=meta)
    with pytest.raises(VideoPose3DImportError, match="video 'vidB' has no entry"):
        import_videopose3d(None, [p2], "custom", tmp_path / "out2")


def _expect_error(tmp_path, match, takes=H36M_TAKES, extra=EXTRA_2D, meta=None, edit=None, **kw):
    p3, p2 = _h36m_files(tmp_path, takes, extra, meta)
    if edit is not None:
        pos2d = load_npz_member(p2, "positions_2d")
        pos3d = load_npz_member(p3, "positions_3d")
        edit(pos3d, pos2d)
        np.savez(p3, positions_3d=pos3d)
        np.savez(p2, positions_2d=pos2d, metadata=load_npz_member(p2, "metadata"))
    with pytest.raises(VideoPose3DImportError, match=match):
        import_videopose3d(p3, [p2], "h36m", tmp_path / "out", **kw)
    assert not (tmp_path / "out" / "h36m_3d.h5").exists()  # validated before writing


SMALL = {"S1": {"Walking 1": 5}, "S9": {"Eating": 4}}


@pytest.mark.parametrize("case,match", [
    ("short", r"subject 'S1', action 'Walking 1', camera 2: 2D has 3 frames, shorter than the 3D's 5"),
    ("no_subject", r"subject 'S9' of the 3D file is missing from the 2D file"),
    ("no_action", r"action 'Eating' of subject 'S9' is missing from the 2D file"),
    ("cam_count", r"subject 'S1', action 'Walking 1' has 3 cameras, the 3D data 4"),
    ("nan_2d", r"subject 'S9', action 'Eating', camera 0: 1 NaN/inf values in frames \[2\]"),
    ("nan_3d", r"data_3d_h36m.npz: subject 'S1', action 'Walking 1': 3 NaN/inf values in frames \[1\]"),
    ("joints_3d", r"subject 'S9', action 'Eating': expected \(T>0, 32, 3\) positions, got shape \(4, 17, 3\)"),
    ("no_camera", r"subject 'S42' has no camera extrinsics"),
    ("joints_2d", r"subject 'S9', action 'Eating', camera 3: 16 joints, but the file's layout 'h36m17' has 17"),
    ("only_2d", r"1 subject/action pair\(s\) have 2D but no 3D: \['S9/Posing'\]"),
])
def test_bad_h36m_inputs(tmp_path, case, match) -> None:
    def edit(p3, p2):
        if case == "short":
            p2["S1"]["Walking 1"][2] = p2["S1"]["Walking 1"][2][:3]
        elif case == "no_subject":
            del p2["S9"]
        elif case == "no_action":
            p2["S9"]["Posing"] = p2["S9"].pop("Eating")
        elif case == "cam_count":
            p2["S1"]["Walking 1"].pop()
        elif case == "nan_2d":
            p2["S9"]["Eating"][0][2, 5, 1] = np.nan
        elif case == "nan_3d":
            p3["S1"]["Walking 1"][1, 0] = np.inf
        elif case == "joints_3d":
            p3["S9"]["Eating"] = p3["S9"]["Eating"][:, :17]
        elif case == "no_camera":
            p3["S42"] = p3.pop("S9")
            p2["S42"] = p2.pop("S9")
        elif case == "joints_2d":
            p2["S9"]["Eating"][3] = p2["S9"]["Eating"][3][:, :16]
        elif case == "only_2d":
            p2["S9"]["Posing"] = p2["S9"]["Eating"]
    _expect_error(tmp_path, match, SMALL, {}, edit=edit)


@pytest.mark.parametrize("meta,kw,match", [
    ({"layout_name": "h36m", "num_joints": 17, "keypoints_symmetry": H36M_SYM},
     {"joint_set": "coco17"}, r"2D layout is 'h36m17' .*but joint set 'coco17' was requested"),
    ({"num_joints": 17, "keypoints_symmetry": H36M_SYM}, {"joint_set": "coco17"},
     r"keypoints_symmetry left=\[4, 5, 6, 11, 12, 13\].* disagrees with joint set 'coco17'"),
    ({"layout_name": "h36m", "num_joints": 16, "keypoints_symmetry": H36M_SYM}, {},
     r"metadata num_joints=16, but layout 'h36m17' has 17 joints"),
    ({"layout_name": "h36m", "num_joints": 17, "keypoints_symmetry": H36M_SYM[::-1]}, {},
     r"keypoints_symmetry left=\[1, 2, 3, 14, 15, 16\].* disagrees with joint set 'h36m17'"),
    ({"layout_name": "humaneva20", "num_joints": 20, "keypoints_symmetry": H36M_SYM}, {},
     r"layout_name 'humaneva20' is not supported"),
    ({"num_joints": 17, "keypoints_symmetry": [[0], [1]]}, {},
     r"no layout_name and 17 joints .* match no known layout"),
])
def test_bad_metadata(tmp_path, meta, kw, match) -> None:
    _expect_error(tmp_path, match, SMALL, {}, meta=meta, **kw)


def test_file_named_for_other_dataset(tmp_path) -> None:
    p3, p2 = _h36m_files(tmp_path, SMALL, {})
    other = p2.with_name("data_2d_humaneva15_gt.npz")
    p2.rename(other)
    with pytest.raises(VideoPose3DImportError, match="says dataset 'humaneva15'"):
        import_videopose3d(p3, [other], "h36m", tmp_path / "out")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_restricted_unpickler_refuses_code_and_foreign_globals(tmp_path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "data_3d_h36m.npz"
    np.savez(bad, positions_3d=np.array(_Evil(marker), dtype=object))
    with pytest.raises(UnsafePickleError, match=r"data_3d_h36m.npz.*positions_3d.*'builtins.exec'"):
        import_videopose3d(bad, [], "h36m", tmp_path / "out")
    assert not marker.exists()
    odd = tmp_path / "odd.npz"
    np.savez(odd, metadata=np.array({"a": fractions.Fraction(1, 3)}, dtype=object))
    with pytest.raises(UnsafePickleError, match=r"odd.npz.*'fractions.Fraction'"):
        load_npz_member(odd, "metadata")
    assert load_npz_member(odd, "metadata", trust_pickle=True) == {"a": fractions.Fraction(1, 3)}


def test_cli_import_help_and_errors(h36m, tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    rc = main(["videopose3d", "--dataset", "h36m", "--data-3d", str(h36m["p3"]),
               "--data-2d", str(h36m["p2"]), "--out", str(out)])
    assert rc == 0 and "20 sequences" in capsys.readouterr().out
    assert Cache(out / "h36m_gt.h5").ids == h36m["kp"].ids
    rc = main(["videopose3d", "--dataset", "custom", "--data-3d", str(h36m["p3"]), "--out", str(out)])
    assert rc == 2 and "takes no 3D file" in capsys.readouterr().err
    rc = main(["videopose3d", "--dataset", "h36m", "--data-2d", str(h36m["p2"]), "--out", str(out)])
    assert rc == 2 and "needs a 3D file (--data-3d)" in capsys.readouterr().err
    rc = main(["videopose3d", "--dataset", "h36m", "--data-3d", str(tmp_path / "missing.npz"),
               "--out", str(out)])
    assert rc == 2 and "missing.npz" in capsys.readouterr().err
    sub = build_parser()._subparsers._group_actions[0].choices["videopose3d"]
    for action in sub._actions:
        if action.dest != "help":
            assert action.help and len(action.help) > 30, action.dest
