"""``poselift infer --tcmr``: features per track -> TCMR -> SMPL meshes in VIBE/TCMR demo keys,
the crop -> image camera conversion, the mesh overlay in the render, resuming without
recomputing features. Tiny random models and the synthetic SMPL (the real one is licence-gated)."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from poselift.infer import InferOptions, run_infer
from poselift.infer.tcmr_stage import crop_cam_to_orig, project_orig, tcmr_windows
from poselift.lifting.checkpoint import save_checkpoint
from poselift.lifting.tcmr.model import TCMR
from poselift.lifting.tcmr.smpl_model import build_spin_smpl
from poselift.lifting.videopose3d.interop import export_videopose3d
from poselift.lifting.videopose3d.model import TemporalModel
from poselift.synthetic.smpl import make_synthetic_smpl

W, H, N = 160, 120, 20
BASE_WIDTH = 4  # ResNet-50 trunk with 4 base channels: 4 * 8 * 4 = 128-d features
POSE = np.array([[0, -56], [-3, -58], [3, -58], [-6, -56], [6, -56], [-10, -46], [10, -46], [-13, -34],
                 [13, -34], [-14, -24], [14, -24], [-6, -26], [6, -26], [-6, -13], [6, -13], [-6, 0],
                 [6, 0]], np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tcmr_infer")
    smpl_dir = make_synthetic_smpl(root / "smpl")
    torch.manual_seed(0)
    model = TCMR(build_spin_smpl(smpl_dir), n_layers=1, hidden_size=16, feat_dim=128, regressor_hidden=16)
    args = {"n_layers": 1, "hidden_size": 16, "seq_len": 16, "feat_dim": 128, "regressor_hidden": 16}
    ckpt = save_checkpoint(root / "tcmr.pt", model_name="tcmr", model_args=args, state_dict=model.state_dict(),
                           config={}, cache_fingerprints={}, epoch=0)
    pos = TemporalModel(17, 2, 17, filter_widths=[3, 3], channels=16).eval()
    lifter = root / "lifter.bin"
    export_videopose3d(lifter, pos, None)
    frames = root / "clip"
    frames.mkdir()
    entries = []
    for t in range(N):  # one person walking right, drawn as a thick stick figure
        img = np.full((H, W, 3), 90, np.uint8)
        kp = POSE + [40 + 3 * t, 100]
        for a, b in zip(range(16), range(1, 17)):
            cv2.line(img, tuple(np.int32(kp[a])), tuple(np.int32(kp[b])), (230, 230, 230), 3)
        cv2.imwrite(str(frames / f"{t:04d}.png"), img)
        x0, y0 = kp.min(0) - 4
        x1, y1 = kp.max(0) + 4
        flat = np.concatenate([kp, np.full((17, 1), 0.9)], 1).reshape(-1)
        entries.append({"image_id": f"{t}.jpg", "category_id": 1, "keypoints": flat.tolist(), "score": 2.5,
                        "box": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "idx": 3})
    kp_json = root / "kp.json"
    kp_json.write_text(json.dumps(entries))
    return {"root": root, "smpl": smpl_dir, "ckpt": ckpt, "lifter": lifter, "clip": frames, "kp": kp_json,
            "entries": entries}


def _opts(s: dict, tcmr: bool = True) -> InferOptions:
    # a render at twice the clip's size: the synthetic SMPL is thin limbs, a few hundred pixels
    return InferOptions(lifter=str(s["lifter"]), keypoints=[str(s["kp"])], device="cpu", progress=False,
                        render_height=2 * H, tcmr=str(s["ckpt"]) if tcmr else None, body_model_dir=str(s["smpl"]),
                        features_random_init=0, features_base_width=BASE_WIDTH)


def _frames(path: Path) -> list[np.ndarray]:
    cap, out = cv2.VideoCapture(str(path)), []
    while True:
        ok, f = cap.read()
        if not ok:
            return out
        out.append(f)


def test_orig_cam_matches_the_crop_projection_by_hand() -> None:
    # a point at X = (0.2, -0.4); crop camera s = 0.8, t = (0.1, 0.05); crop of side 50 at (70, 40)
    cam, crop = np.array([[0.8, 0.1, 0.05]]), np.array([[70.0, 40.0, 50.0, 50.0]])
    oc = crop_cam_to_orig(cam, crop, W, H)[0]
    np.testing.assert_allclose(oc[:2], [0.8 * 50 / 160, 0.8 * 50 / 120])
    # by hand: crop coordinates 0.8 * (0.3, -0.35) = (0.24, -0.28) -> pixels 70 + 0.24 * 25, 40 - 0.28 * 25
    uv = project_orig(np.array([[0.2, -0.4, 3.0]]), oc, W, H)[0]
    np.testing.assert_allclose(uv, [76.0, 33.0], atol=1e-9)


def test_windows_repeat_the_target_at_the_borders() -> None:
    w = tcmr_windows(20)
    assert w.shape == (20, 16)
    np.testing.assert_array_equal(w[8], np.arange(16))          # first full window: 0..15, target 8
    np.testing.assert_array_equal(w[12], np.arange(4, 20))       # last full window
    assert (w[3] == 3).all() and (w[13] == 13).all()             # would leave the track: 16 copies
    short = tcmr_windows(5)                                      # a track shorter than one window
    np.testing.assert_array_equal(short, np.repeat(np.arange(5)[:, None], 16, 1))


def test_tcmr_stage_outputs_render_and_resume(setup: dict) -> None:
    out = setup["root"] / "out"
    res = run_infer([str(setup["clip"])], out, _opts(setup))
    assert "features_s" in res["timings"] and "tcmr_s" in res["timings"]
    pkl = Path(res["paths"]["clip:tcmr"])
    with open(pkl, "rb") as fh:
        demo = pickle.load(fh)
    assert list(demo) == [3]
    r = demo[3]
    shapes = {"pred_cam": (N, 3), "orig_cam": (N, 4), "verts": (N, 6890, 3), "pose": (N, 72), "betas": (N, 10),
              "joints3d": (N, 49, 3), "bboxes": (N, 4), "frame_ids": (N,)}
    assert {k: r[k].shape for k in shapes} == shapes
    np.testing.assert_array_equal(r["frame_ids"], np.arange(N))
    assert all(np.isfinite(r[k]).all() for k in shapes)
    # the crop region: the detection box's centre, side max(w, h) * 1.2 (TCMR demo crop scale)
    b = np.array(setup["entries"][5]["box"])
    np.testing.assert_allclose(r["bboxes"][5], [b[0] + b[2] / 2, b[1] + b[3] / 2, max(b[2:]) * 1.2,
                                                max(b[2:]) * 1.2], atol=1e-3)
    # orig_cam by hand for frame 5: a vertex through the crop camera, then crop -> image pixels
    s, tx, ty = r["pred_cam"][5].astype(np.float64)
    cx, cy, side = r["bboxes"][5, :3].astype(np.float64)
    vert = r["verts"][5, 100].astype(np.float64)
    hand = [cx + s * (vert[0] + tx) * side / 2, cy + s * (vert[1] + ty) * side / 2]
    np.testing.assert_allclose(project_orig(vert[None], r["orig_cam"][5], W, H)[0], hand, rtol=1e-4, atol=1e-3)
    with np.load(pkl.with_suffix(".npz")) as z:
        np.testing.assert_array_equal(z["3/verts"], r["verts"])

    feat = out / "features.h5"
    mtime = feat.stat().st_mtime_ns
    again = run_infer([str(setup["clip"])], out, _opts(setup))  # resumes: no feature or TCMR recompute
    assert "features_s" not in again["timings"] and "tcmr_s" not in again["timings"]
    with open(pkl, "rb") as fh:
        np.testing.assert_array_equal(pickle.load(fh)[3]["verts"], r["verts"])
    assert "SMPL meshes" in (out / "report.html").read_text()

    with_mesh = _frames(Path(res["paths"]["clip:mp4"]))
    plain = _frames(Path(run_infer([str(setup["clip"])], out, _opts(setup, tcmr=False))["paths"]["clip:mp4"]))
    assert not pkl.exists()  # a run without --tcmr leaves no meshes of another run behind
    assert len(plain) == len(with_mesh) == N
    fw = 2 * W  # the frame part (left of the 3D panel)
    diff = [np.abs(a[:, :fw].astype(int) - b[:, :fw].astype(int)).max(-1) > 30 for a, b in zip(with_mesh, plain)]
    assert all(d.sum() > 100 for d in diff)  # the mesh is drawn in every frame of the track
    for k in (0, 10, N - 1):  # ... and nowhere else (4 px of slack for MPEG-4 block artefacts)
        uv = project_orig(r["verts"][k].astype(np.float64), r["orig_cam"][k], W, H) * 2
        ys, xs = np.nonzero(diff[k])
        assert xs.min() >= uv[:, 0].min() - 4 and xs.max() <= uv[:, 0].max() + 4
        assert ys.min() >= uv[:, 1].min() - 4 and ys.max() <= uv[:, 1].max() + 4

    back = run_infer([str(setup["clip"])], out, _opts(setup))  # meshes again, from the cached features
    assert "features_s" not in back["timings"] and "tcmr_s" in back["timings"]
    assert feat.stat().st_mtime_ns == mtime
    with open(pkl, "rb") as fh:
        np.testing.assert_allclose(pickle.load(fh)[3]["verts"], r["verts"], atol=1e-6)


def test_tcmr_needs_the_body_model_and_matching_features(setup: dict) -> None:
    from poselift.infer.sources import InputError

    o = _opts(setup)
    o.body_model_dir = None
    with pytest.raises(InputError, match="--body-model-dir"):
        run_infer([str(setup["clip"])], setup["root"] / "bad1", o)
    o = _opts(setup)
    o.body_model_dir = str(setup["root"])  # a folder without SMPL
    with pytest.raises(FileNotFoundError, match="SMPL_NEUTRAL.pkl .* missing in"):
        run_infer([str(setup["clip"])], setup["root"] / "bad3", o)
    assert not (setup["root"] / "bad3" / "keypoints2d.h5").exists()  # refused before any stage ran
    o = _opts(setup)
    o.features_random_init = None
    with pytest.raises(InputError, match="--features-weights"):
        run_infer([str(setup["clip"])], setup["root"] / "bad4", o)
    o = _opts(setup)
    o.features_base_width = 8  # 256-d features for a model that takes 128
    with pytest.raises(InputError, match="256-d features but the TCMR model"):
        run_infer([str(setup["clip"])], setup["root"] / "bad2", o)


def test_released_vibe_checkpoint_keeps_the_window_target(setup: dict) -> None:
    from poselift.datasets.cache import Cache
    from poselift.lifting.tcmr.model import VIBE

    torch.manual_seed(1)
    vibe = VIBE(build_spin_smpl(setup["smpl"]), n_layers=1, hidden_size=16, feat_dim=128,
                regressor_hidden=16).eval()
    ck = setup["root"] / "vibe_model.pth.tar"  # the released trainer's layout
    torch.save({"epoch": 3, "gen_state_dict": vibe.state_dict(), "performance": np.float64(60.0),
                "gen_optimizer": {"state": {}, "param_groups": []}}, ck)
    o = _opts(setup)
    o.tcmr, o.render = str(ck), False
    out = setup["root"] / "vibe_out"
    res = run_infer([str(setup["clip"])], out, o)
    with open(res["paths"]["clip:tcmr"], "rb") as fh:
        r = pickle.load(fh)[3]
    x = torch.from_numpy(Cache(out / "features.h5").read("clip/track3", "features").astype(np.float32))
    with torch.no_grad():
        want = vibe(x[None, 2:18])["verts"][0, 8]  # frame 10 = the middle (index 8) of frames 2..17
    np.testing.assert_allclose(r["verts"][10], want.numpy(), rtol=1e-5, atol=1e-6)


def test_cli_with_a_resnet50_checkpoint(setup: dict, capsys: pytest.CaptureFixture) -> None:
    from poselift.extract.backbones import BACKBONES, file_sha256
    from poselift.infer.cli import main

    torch.manual_seed(2)
    weights = setup["root"] / "resnet50_tiny.pth"  # torchvision layout, 4 base channels -> 128-d
    torch.save(BACKBONES["resnet50"](base_width=BASE_WIDTH).state_dict(), weights)
    out = setup["root"] / "cli_out"
    rc = main([str(setup["clip"]), "--out", str(out), "--keypoints", str(setup["kp"]), "--lifter",
               str(setup["lifter"]), "--tcmr", str(setup["ckpt"]), "--body-model-dir", str(setup["smpl"]),
               "--features-backbone", "resnet50", "--features-weights", str(weights), "--no-render",
               "--device", "cpu", "--no-progress"])
    assert rc == 0, capsys.readouterr()
    with open(out / "clip" / "tcmr_output.pkl", "rb") as fh:
        r = pickle.load(fh)[3]
    assert r["verts"].shape == (N, 6890, 3)
    run = json.loads((out / "run.json").read_text())
    assert run["stages"]["features"]["weights"] == file_sha256(weights)
    assert run["stages"]["features"]["backbone"] == "resnet50"
