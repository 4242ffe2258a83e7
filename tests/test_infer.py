"""``poselift infer`` on clips the tests write: two people crossing, a person leaving and
returning, no person, a corrupt frame; resume / settings changes; render and report checks."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from poselift.datasets.cache import Cache
from poselift.datasets.joints import COCO17
from poselift.infer import InferOptions, run_infer
from poselift.infer.lift import JointSetMismatch, interpolate_missing, normalize_by_width, to_lifter_joints
from poselift.infer.render import PANEL_BG
from poselift.lifting.videopose3d.model import TemporalModel
from poselift.lifting.videopose3d.interop import export_videopose3d

W, H = 160, 120
# A standing COCO-17 figure, 60 px tall, feet at y = 0, centred at x = 0.
POSE = np.array([[0, -56], [-3, -58], [3, -58], [-6, -56], [6, -56], [-10, -46], [10, -46], [-13, -34],
                 [13, -34], [-14, -24], [14, -24], [-6, -26], [6, -26], [-6, -13], [6, -13], [-6, 0],
                 [6, 0]], np.float32)


def _people(t: int, who: str) -> list[tuple[int, np.ndarray]]:
    """(track id, (17, 2) px keypoints) of the people in frame t of a scenario."""
    if who == "crossing":  # A walks right, B walks left lower in the image; they cross mid-clip
        return [(0, POSE + [20 + 4 * t, 80]), (1, POSE * 1.1 + [140 - 4 * t, 105])]
    if who == "leave_return":  # visible in frames 0-9 and 20-29, away 10-19
        return [] if 10 <= t < 20 else [(5, POSE + [40 + t, 100])]
    return []


def _write_clip(root: Path, who: str, n: int, *, as_video: bool = False, corrupt: int | None = None
                ) -> tuple[Path, list[dict]]:
    """Frames with the people drawn as thick stick figures + their AlphaPose-style entries."""
    entries = []
    folder = root / f"{who}_frames"
    folder.mkdir(parents=True)
    frames = []
    for t in range(n):
        img = np.full((H, W, 3), 90, np.uint8)
        for tid, kp in _people(t, who):
            for j, p in COCO17.bones():
                cv2.line(img, tuple(np.int32(kp[j])), tuple(np.int32(kp[p])), (230, 230, 230), 3)
            flat = np.concatenate([kp, np.full((17, 1), 0.9)], 1).reshape(-1)
            x0, y0 = kp.min(0) - 4
            x1, y1 = kp.max(0) + 4
            entries.append({"image_id": f"{t}.jpg", "category_id": 1, "keypoints": flat.tolist(), "score": 2.5,
                            "box": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "idx": tid})
        frames.append(img)
        cv2.imwrite(str(folder / f"{t:04d}.png"), img)
    if corrupt is not None:
        (folder / f"{corrupt:04d}.png").write_bytes(b"not a png at all")
    if as_video:
        path = root / f"{who}.avi"
        vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (W, H))
        for f in frames:
            vw.write(f)
        vw.release()
        shutil.rmtree(folder)
        return path, entries
    return folder, entries


def _lifter(path: Path, j_in: int = 17, traj: bool = False, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    pos = TemporalModel(j_in, 2, 17, filter_widths=[3, 3], channels=16).eval()
    tr = TemporalModel(j_in, 2, 1, filter_widths=[3, 3], channels=16).eval() if traj else None
    if tr is not None:
        with torch.no_grad():
            tr.shrink.bias.copy_(torch.tensor([0.1, 0.2, 4.0]))  # a root about 4 m in front of the camera
    export_videopose3d(path, pos, tr)
    return path


def _opts(lifter: Path, kp: list[Path], **kw) -> InferOptions:
    return InferOptions(lifter=str(lifter), keypoints=[str(p) for p in kp], device="cpu", progress=False,
                        render_height=96, **kw)


def _npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return dict(z)


def _read_mp4(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            return out
        out.append(f)


def test_two_people_crossing_coco_json(tmp_path: Path) -> None:
    clip, entries = _write_clip(tmp_path, "crossing", 30, as_video=True)
    coco = {"images": [{"id": 100 + t, "file_name": f"{t}.jpg"} for t in range(30)],
            "annotations": [{"image_id": 100 + int(e["image_id"].split(".")[0]), "category_id": 1,
                             "keypoints": e["keypoints"], "bbox": e["box"], "score": 1.0} for e in entries]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    res = run_infer([str(clip)], tmp_path / "out", _opts(_lifter(tmp_path / "l.bin"), [tmp_path / "coco.json"]))
    assert res["tracks"] == 2
    z = _npz(res["paths"]["crossing:npz"])
    assert z["lengths"].tolist() == [30, 30] and z["joints_3d"].shape == (60, 17, 3)
    assert np.isfinite(z["joints_3d"]).all()
    # identities survive the crossing: each track's nose keeps moving the same way
    for k, L in enumerate(np.cumsum([0, *z["lengths"]])[:-1]):
        dx = np.diff(z["keypoints_2d"][L:L + 30, 0, 0])
        assert (np.sign(dx) == np.sign(dx[0])).all() and abs(dx).min() > 3
    ap = json.loads(Path(res["paths"]["crossing:alphapose"]).read_text())
    assert len(ap) == 60 and {e["idx"] for e in ap} == {0, 1} and len(ap[0]["keypoints"]) == 51
    tracks = sorted(Path(res["paths"]["crossing:tracks"]).glob("*.json"))
    doc = json.loads(tracks[0].read_text())
    assert len(doc["frame_ids"]) == 30 and np.asarray(doc["joints_3d"]).shape == (30, 17, 3)
    assert np.asarray(doc["keypoints_2d"]).shape == (30, 17, 3) and doc["root_relative"] is True
    # the render: one frame per source frame, frame + 2 panels side by side, 3D panels not blank
    frames = _read_mp4(Path(res["paths"]["crossing:mp4"]))
    assert len(frames) == 30 and len(_read_mp4(Path(res["paths"]["crossing:webm"]))) == 30
    fw = int(round(W * 96 / H)) // 2 * 2
    assert frames[0].shape == (96, fw + 2 * 96, 3)
    for f in frames[::7]:
        for k in range(2):
            panel = f[:, fw + k * 96: fw + (k + 1) * 96].astype(int)
            dark = (np.abs(panel - np.array(PANEL_BG)).sum(-1) > 150).mean()
            assert dark > 0.01, "3D panel is blank"
    report = Path(res["paths"]["report"]).read_text()
    assert report.count('class="track"') == 2 and "data:image/png;base64" in report  # the tracks plot
    assert (tmp_path / "out" / "crossing" / "tracks.png").exists()


def test_leave_and_return_interpolates_and_resumes(tmp_path: Path) -> None:
    clip, entries = _write_clip(tmp_path, "leave_return", 30)
    (tmp_path / "ap.json").write_text(json.dumps(entries))
    lifter = _lifter(tmp_path / "l.bin")
    out = tmp_path / "out"
    res = run_infer([str(clip)], out, _opts(lifter, [tmp_path / "ap.json"]))
    z = _npz(res["paths"]["leave_return_frames:npz"])
    assert z["lengths"].tolist() == [30] and z["track_ids"].tolist() == [5]
    assert z["detected"].sum() == 20 and not z["detected"][10:20].any()
    assert np.isfinite(z["joints_3d"]).all()
    # a re-run reuses every cache; a new lifter redoes only the lifting
    kp_mtime = (out / "keypoints2d.h5").stat().st_mtime_ns
    lift_mtime = (out / "poses3d.h5").stat().st_mtime_ns
    run_infer([str(clip)], out, _opts(lifter, [tmp_path / "ap.json"], render=False))
    assert (out / "poses3d.h5").stat().st_mtime_ns == lift_mtime
    res2 = run_infer([str(clip)], out, _opts(_lifter(tmp_path / "l2.bin", seed=1), [tmp_path / "ap.json"],
                                             render=False))
    assert (out / "keypoints2d.h5").stat().st_mtime_ns == kp_mtime
    assert (out / "poses3d.h5").stat().st_mtime_ns != lift_mtime
    z2 = _npz(res2["paths"]["leave_return_frames:npz"])
    assert np.abs(z2["joints_3d"] - z["joints_3d"]).max() > 1e-4
    # another video into the same folder is refused, never mixed
    other, _ = _write_clip(tmp_path / "b", "crossing", 5)
    with pytest.raises(ValueError, match="other input videos"):
        run_infer([str(other)], out, _opts(lifter, [tmp_path / "ap.json"]))
    # a second run while one works on the folder is refused naming the holder, even with
    # --overwrite, and removes nothing (flock: a second open file description conflicts like
    # another process would)
    from poselift.datasets.cache.lock import CacheLockedError, WriterLock

    holder = WriterLock(out / "run.json")
    holder.acquire()
    try:
        with pytest.raises(CacheLockedError, match=r"pid \d+"):
            run_infer([str(clip)], out, _opts(lifter, [tmp_path / "ap.json"], overwrite=True))
        assert (out / "keypoints2d.h5").stat().st_mtime_ns == kp_mtime and (out / "run.json").exists()
    finally:
        holder.release()
    # the refused runs above released the folder: the next one proceeds (and resumes)
    run_infer([str(clip)], out, _opts(lifter, [tmp_path / "ap.json"], render=False))
    assert (out / "keypoints2d.h5").stat().st_mtime_ns == kp_mtime
    assert not (out / "run.json.lock").exists()
    # the 2D cache of a run is itself a valid --keypoints input
    res3 = run_infer([str(clip)], tmp_path / "out3", _opts(lifter, [out / "keypoints2d.h5"], render=False))
    z3 = _npz(res3["paths"]["leave_return_frames:npz"])
    np.testing.assert_allclose(z3["joints_3d"], z["joints_3d"], atol=1e-6)


def test_no_person_and_corrupt_frame(tmp_path: Path) -> None:
    clip, _ = _write_clip(tmp_path, "empty", 12, corrupt=5)
    (tmp_path / "ap.json").write_text("[]")
    res = run_infer([str(clip)], tmp_path / "out", _opts(_lifter(tmp_path / "l.bin"), [tmp_path / "ap.json"]))
    assert res["tracks"] == 0
    assert any("no person" in n for n in res["notes"])
    assert any("unreadable frame" in n and "[5]" in n for n in res["notes"])
    assert len(_read_mp4(Path(res["paths"]["empty_frames:mp4"]))) == 12
    assert _npz(res["paths"]["empty_frames:npz"])["joints_3d"].shape == (0, 17, 3)
    assert json.loads(Path(res["paths"]["empty_frames:alphapose"]).read_text()) == []
    assert "No person was found" in Path(res["paths"]["report"]).read_text()


def test_short_track_trajectory_and_single_person(tmp_path: Path) -> None:
    clip, entries = _write_clip(tmp_path, "crossing", 4)
    (tmp_path / "ap.json").write_text(json.dumps(entries))
    res = run_infer([str(clip)], tmp_path / "out", _opts(_lifter(tmp_path / "t.bin", traj=True),
                                                         [tmp_path / "ap.json"], single_person=True))
    assert res["tracks"] == 1 and any("shorter than the lifter's receptive field (9)" in n for n in res["notes"])
    z = _npz(res["paths"]["crossing_frames:npz"])
    assert z["lengths"].tolist() == [4]
    assert 3.0 < z["joints_3d"][:, 0, 2].mean() < 5.0  # the trajectory model's root is added


def test_lifting_conventions() -> None:
    x = np.array([[0.0, 0], [np.nan, np.nan], [np.nan, np.nan], [3, 6]])
    out = interpolate_missing(x, np.array([1, 0, 0, 1], bool))
    np.testing.assert_allclose(out[:, 1], [0, 2, 4, 6])
    np.testing.assert_allclose(normalize_by_width(np.array([[0.0, 0], [160, 120]]), 160, 120),
                               [[-1, -0.75], [1, 0.75]])
    halpe = np.random.default_rng(0).normal(size=(2, 136, 2))
    np.testing.assert_allclose(to_lifter_joints(halpe, "halpe136", "coco17"), halpe[:, :17], rtol=1e-6)
    with pytest.raises(JointSetMismatch) as e:
        to_lifter_joints(halpe[:, :17], "coco17", "humaneva15")
    assert "'coco17'" in str(e.value) and "'humaneva15'" in str(e.value) and "\n" not in str(e.value)


def test_report_opens_in_headless_chromium(tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium browser installed (apt-get install chromium); .ci/run installs it")
    clip, entries = _write_clip(tmp_path, "crossing", 10)
    (tmp_path / "ap.json").write_text(json.dumps(entries))
    res = run_infer([str(clip)], tmp_path / "out", _opts(_lifter(tmp_path / "l.bin"), [tmp_path / "ap.json"]))
    report = Path(res["paths"]["report"]).resolve()
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", report.as_uri()],
                         capture_output=True, text=True, timeout=60)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('class="track"') == 2 and "<svg" in dom.stdout
    assert 'src="data:video/webm;base64,' in dom.stdout
    # the browser decodes the report's video: a probe page reports the decoded frame size
    webm = Path(res["paths"]["crossing_frames:webm"])
    probe = tmp_path / "probe.html"
    probe.write_text(f'<video id="v" muted src="{webm.resolve().as_uri()}"></video><script>'
                     'v.addEventListener("loadeddata", () => document.title = "size " + v.videoWidth + "x" '
                     '+ v.videoHeight); v.addEventListener("error", () => document.title = "error");</script>')
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=60)
    w = int(round(W * 96 / H)) // 2 * 2 + 2 * 96
    assert f"<title>size {w // 4 * 2}x48</title>" in dom.stdout, dom.stdout[-500:]  # the half-size preview


def test_cli_summary_and_joint_set_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from poselift.cli import main as umbrella

    clip, entries = _write_clip(tmp_path, "crossing", 6)
    (tmp_path / "ap.json").write_text(json.dumps(entries))
    args = [str(clip), "--out", str(tmp_path / "out"), "--keypoints", str(tmp_path / "ap.json"), "--no-progress",
            "--render-height", "64"]
    assert umbrella(["infer", *args, "--lifter", str(_lifter(tmp_path / "l.bin"))]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("poselift infer: 2 track(s)") and "report.html" in line and "render.mp4" in line
    # a --keypoints cache of the wrong kind is one clear line too
    bad = [str(clip), "--out", str(tmp_path / "o2"), "--keypoints", str(tmp_path / "out" / "poses3d.h5"),
           "--lifter", str(tmp_path / "l.bin"), "--no-progress"]
    assert umbrella(["infer", *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "poses3d.h5" in err and "keypoints2d" in err
    assert umbrella(["infer", *args, "--lifter", str(_lifter(tmp_path / "he.bin", j_in=15))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'coco17'" in err and "'humaneva15'" in err


def test_render_view_is_upright_with_feet_on_the_ground() -> None:
    from poselift.infer.render import to_world_upright

    # An upright H36M-17 person 4 m in front of a level camera (camera y points down).
    pose = np.zeros((2, 17, 3))
    pose[..., 2] = 4.0
    pose[:, 10, 1] = -0.8   # head
    pose[:, [3, 6], 1] = 0.9  # ankles
    world = to_world_upright(pose)
    assert abs(world[..., 2].min()) < 1e-9
    assert world[0, 10, 2] - world[0, 3, 2] > 1.5  # the head is 1.7 m above the ankles, give or take the tilt


def test_person_leaving_and_returning_keeps_one_track_id_without_file_ids(tmp_path: Path) -> None:
    clip, entries = _write_clip(tmp_path, "leave_return", 30)
    for e in entries:
        del e["idx"]  # the tracker has to join the two visits (away 10 frames < max age 30)
    (tmp_path / "ap.json").write_text(json.dumps(entries))
    res = run_infer([str(clip)], tmp_path / "out", _opts(_lifter(tmp_path / "l.bin"), [tmp_path / "ap.json"],
                                                         render=False))
    z = _npz(res["paths"]["leave_return_frames:npz"])
    assert z["lengths"].tolist() == [30] and z["detected"].sum() == 20


def test_2d_json_frames_by_image_file_name(tmp_path: Path) -> None:
    from poselift.infer.sources import frame_names, list_inputs, load_2d_json

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(1, 4):  # numbered from 1: frame 0 is img_1.png
        cv2.imwrite(str(folder / f"img_{i}.png"), np.zeros((8, 8, 3), np.uint8))
    v = list_inputs([folder])[0]
    flat = np.concatenate([POSE, np.ones((17, 1))], 1).reshape(-1).tolist()
    (tmp_path / "ap.json").write_text(json.dumps([{"image_id": "img_3.png", "keypoints": flat, "score": 1.0},
                                                  {"image_id": "img_1.png", "keypoints": flat, "score": 1.0}]))
    p = load_2d_json(tmp_path / "ap.json", v.n_frames, frame_names(v))
    assert p.frame.tolist() == [0, 2] and p.joint_set == "coco17" and (p.track == -1).all()
    np.testing.assert_allclose(p.boxes[0], [*POSE.min(0), *POSE.max(0)])


def test_precision_is_part_of_the_stage_keys_and_recorded(tmp_path: Path) -> None:
    clip, entries = _write_clip(tmp_path, "leave_return", 20)
    (tmp_path / "ap.json").write_text(json.dumps(entries))
    lifter = _lifter(tmp_path / "l.bin")
    out = tmp_path / "out"
    res = run_infer([str(clip)], out, _opts(lifter, [tmp_path / "ap.json"], render=False))
    lift_mtime = (out / "poses3d.h5").stat().st_mtime_ns
    assert "precision" not in Cache(out / "poses3d.h5").header.source  # folders from before keep their keys
    a = _npz(res["paths"]["leave_return_frames:npz"])["joints_3d"]  # read now: the re-run rewrites it
    res2 = run_infer([str(clip)], out, _opts(lifter, [tmp_path / "ap.json"], render=False, precision="bf16"))
    assert (out / "poses3d.h5").stat().st_mtime_ns != lift_mtime  # lifted again, in bf16
    assert Cache(out / "poses3d.h5").header.source["precision"] == "bf16"
    b = _npz(res2["paths"]["leave_return_frames:npz"])["joints_3d"]
    assert 0 < np.nanmax(np.abs(a - b)) < 0.05 * np.nanmax(np.abs(a)) + 1e-3
