"""Optional TCMR stage of ``poselift infer``: per-track backbone features -> TCMR -> SMPL meshes.

* ``features.h5`` (kind ``features``, :func:`poselift.extract.features.extract_features`): one
  sequence per track, TCMR's square crop (``CONTRACTS['tcmr-demo']``) around the track's boxes;
  frames of a track without a detection get a box interpolated from the detected ones. Cached
  and resumable like the other stages; its run.json key (backbone, weights, crop contract, the
  2D cache's content) starts it afresh when any of them changes.
* TCMR on one 16-frame window per frame (8 before, the target, 7 after); a window that would
  leave the track is 16 copies of the target frame (TCMR's evaluation layout,
  ``pad='repeat_target'``). Re-run when the model or the features change. A released VIBE
  checkpoint runs on the same windows, keeping its output at the target frame. Frames whose
  crop lies wholly outside the image (``valid=False`` in the features cache) get no mesh.
* ``DIR/<video>/tcmr_output.pkl``: VIBE/TCMR demo layout, a dict keyed by track id of
  ``pred_cam`` (N, 3) weak-perspective (s, tx, ty) in the crop, ``orig_cam`` (N, 4)
  (sx, sy, tx, ty) in the full image, ``verts`` (N, V, 3), ``pose`` (N, 72), ``betas`` (N, 10),
  ``joints3d`` (N, 49, 3), ``bboxes`` (N, 4) (cx, cy, side, side) of the region each crop
  shows, ``frame_ids`` (N,). ``tcmr_output.npz`` holds the same arrays as ``<track>/<key>``.

The crop camera projects a point X to crop coordinates in [-1, 1] as ``s (X_xy + t)``; with
the crop of side L centred on (cx, cy) in an image of W x H this is
``sx = s L / W``, ``sy = s L / H``, ``tx' = tx + (cx - W/2) / (W/2) / sx``,
``ty' = ty + (cy - H/2) / (H/2) / sy`` (the conversion VIBE's demo makes), and image pixels
are ``u = (sx (X + tx') + 1) W / 2``, ``v = (sy (Y + ty') + 1) H / 2``.
"""
from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from poselift.core.precision import resolve_precision
from poselift.datasets.cache import Cache

from .lift import interpolate_missing
from .outputs import TrackResult
from .sources import InputError, VideoInput

__all__ = ["check_tcmr_options", "crop_cam_to_orig", "project_orig", "tcmr_windows", "run_tcmr_stage", "mesh_overlay",
           "drop_tcmr_outputs"]

OUT_KEYS = ("pred_cam", "orig_cam", "verts", "pose", "betas", "joints3d", "bboxes", "frame_ids")


def crop_cam_to_orig(pred_cam: np.ndarray, crop_boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 3) crop cameras (s, tx, ty) and (N, 4) crop regions (cx, cy, side, side) px ->
    (N, 4) full-image cameras (sx, sy, tx, ty) for an image of ``width`` x ``height``."""
    cam = np.asarray(pred_cam, np.float64)
    cx, cy, side = crop_boxes[:, 0], crop_boxes[:, 1], crop_boxes[:, 2]
    hw, hh = width / 2.0, height / 2.0
    sx, sy = cam[:, 0] * side / width, cam[:, 0] * side / height
    return np.stack([sx, sy, (cx - hw) / hw / sx + cam[:, 1], (cy - hh) / hh / sy + cam[:, 2]], -1)


def project_orig(points: np.ndarray, orig_cam: np.ndarray, width: int, height: int) -> np.ndarray:
    """(..., P, 3) camera-frame points with one (..., 4) image camera -> (..., P, 2) pixels."""
    c = np.asarray(orig_cam, np.float64)[..., None, :]
    u = (c[..., 0] * (points[..., 0] + c[..., 2]) + 1) * width / 2
    v = (c[..., 1] * (points[..., 1] + c[..., 3]) + 1) * height / 2
    return np.stack([u, v], -1)


def tcmr_windows(n: int, seq_len: int = 16, left: int = 8) -> np.ndarray:
    """(n, seq_len) frame indices: the window around each target, or the target repeated
    where the window would leave the sequence."""
    t = np.arange(n)[:, None]
    win = t - left + np.arange(seq_len)[None]
    inside = (win.min(1) >= 0) & (win.max(1) < n)
    return np.where(inside[:, None], win, t)


def _filled_boxes(t: TrackResult) -> np.ndarray:
    ok = t.detected & np.isfinite(t.boxes).all(1)
    return interpolate_missing(t.boxes, ok).astype(np.float32)


def _backbone(o: Any) -> tuple[torch.nn.Module, str]:
    from poselift.extract.cli import load_backbone

    ns = argparse.Namespace(backbone=o.features_backbone, weights=o.features_weights,
                            random_init=o.features_random_init is not None, seed=o.features_random_init or 0,
                            base_width=o.features_base_width, weights_format="auto",
                            trust_checkpoint=o.trust_checkpoint)
    return load_backbone(ns)


def check_tcmr_options(o: Any) -> None:
    """Refuse a ``--tcmr`` run that lacks the body model or the backbone weights before any stage
    runs (detection and 2D can take long)."""
    from poselift.lifting.tcmr.smpl_model import find_body_model_file

    if not o.body_model_dir:
        raise InputError("--tcmr needs --body-model-dir (the folder with the SMPL neutral model)")
    find_body_model_file(o.body_model_dir)  # a clear error naming the folder when the model is missing
    if o.features_weights is None and o.features_random_init is None:
        raise InputError("--tcmr needs --features-weights (the HMR/SPIN or ResNet-50 checkpoint the TCMR model's "
                         "features came from)")


def _side_stage(run: Any, name: str, key: dict[str, Any], paths: list[Path]) -> bool:
    """run.json bookkeeping of a stage outside the lift chain: True when its key is unchanged
    (its results may be reused), else its old results are removed and the key recorded."""
    from .pipeline import _remove_cache

    if run.doc["stages"].get(name) == key:
        return True
    for p in paths:
        _remove_cache(p) if p.suffix == ".h5" else p.unlink(missing_ok=True)
    run.doc["stages"][name] = key
    run.save()
    return False


def run_tcmr_stage(o: Any, run: Any, kp_fingerprint: str, videos: list[VideoInput],
                   tracks: dict[str, list[TrackResult]], device: str, timings: dict[str, float],
                   notes: list[str]) -> tuple[dict[str, dict[int, dict[str, np.ndarray]]], np.ndarray]:
    """Features -> TCMR for every track; returns ({video_id: {track_id: demo-key arrays}}, the
    SMPL faces (F, 3)) and writes ``tcmr_output.pkl`` / ``.npz`` per video."""
    from poselift.extract.backbones import file_sha256
    from poselift.extract.contracts import CONTRACTS
    from poselift.extract.features import SequenceSpec, extract_features
    from poselift.lifting.tcmr.eval import load_tcmr_any
    from poselift.lifting.tcmr.smpl_model import find_body_model_file

    check_tcmr_options(o)
    model, info = load_tcmr_any(o.tcmr, o.body_model_dir, device=device, trust_pickle=o.trust_checkpoint)
    backbone, wsha = _backbone(o)
    if backbone.feature_dim != model.feat_dim:
        raise InputError(f"--features-backbone gives {backbone.feature_dim}-d features but the TCMR model "
                         f"{o.tcmr} takes {model.feat_dim}-d ones")
    contract = CONTRACTS["tcmr-demo"]
    feat_path = run.out / "features.h5"
    fkey = {"backbone": o.features_backbone, "weights": wsha, "feature_dim": backbone.feature_dim,
            "contract": contract.to_dict(), "single_person": o.single_person, "2d": kp_fingerprint,
            **_precision_key(o)}
    if not (_side_stage(run, "features", fkey, [feat_path]) and feat_path.exists()):
        t0 = time.perf_counter()
        specs = [SequenceSpec(t.seq_id, v.path, _filled_boxes(t), t.frames.astype(np.int64))
                 for v in videos for t in tracks.get(v.video_id, []) if t.detected.any()]
        res = extract_features(specs, feat_path, backbone, contract, device=device, dtype=np.float32,
                               weights_sha256=wsha, extractor=o.features_backbone, progress=o.progress,
                               fingerprint=kp_fingerprint, precision=getattr(o, "precision", None))
        notes += [f"{sid}: feature extraction failed ({err}): no mesh" for sid, err in res.failed.items()]
        timings["features_s"] = time.perf_counter() - t0
    feats = Cache(feat_path, kind="features")
    mdl = Path(o.tcmr)
    tkey = {"tcmr": file_sha256(mdl) if mdl.is_file() else str(o.tcmr), "kind": info["kind"],
            "body_model": file_sha256(find_body_model_file(o.body_model_dir)),
            "features": feats.content_fingerprint, **_precision_key(o)}
    outs = [run.out / v.video_id / f"tcmr_output.{s}" for v in videos for s in ("pkl", "npz")]
    reuse = _side_stage(run, "tcmr", tkey, outs) and all(p.exists() for p in outs)
    t0 = time.perf_counter()
    result: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for v in videos:
        d = run.out / v.video_id
        if reuse:
            with np.load(d / "tcmr_output.npz") as z:
                per: dict[int, dict[str, np.ndarray]] = {}
                for k in z.files:
                    tid, name = k.split("/")
                    per.setdefault(int(tid), {})[name] = z[k]
            result[v.video_id] = per
            continue
        per = {}
        for t in tracks.get(v.video_id, []):
            if t.seq_id in feats.ids:
                per[t.track_id] = _predict_track(model, feats, t.seq_id, contract, v.size, device,
                                                 precision=getattr(o, "precision", None) or "fp32")
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "tcmr_output.pkl", "wb") as fh:
            pickle.dump(per, fh, protocol=4)
        np.savez(d / "tcmr_output.npz", **{f"{tid}/{k}": a for tid, r in per.items() for k, a in r.items()})
        result[v.video_id] = per
    if not reuse:
        timings["tcmr_s"] = time.perf_counter() - t0
    return result, np.asarray(model.regressor.smpl.faces, np.int64)


def _precision_key(o: Any) -> dict[str, str]:
    """Stage-key part for ``--precision`` (absent when not given: older folders keep their keys)."""
    return {"precision": o.precision} if getattr(o, "precision", None) else {}


@torch.no_grad()
def _predict_track(model: torch.nn.Module, feats: Cache, sid: str, contract: Any, size: tuple[int, int],
                   device: str, batch: int = 64, precision: str = "fp32") -> dict[str, np.ndarray]:
    x = torch.from_numpy(feats.read(sid, "features").astype(np.float32))
    valid = feats.read(sid, "valid").astype(bool)
    boxes = feats.read(sid, "boxes")
    frames = feats.read(sid, "frame_index").astype(np.int64)
    keep = np.flatnonzero(valid)  # frames whose crop the backbone saw
    x, boxes, frames = x[keep], boxes[keep], frames[keep]
    from poselift.lifting.tcmr.data import LEFT, SEQ_LEN
    from poselift.lifting.tcmr.model import VIBE

    win = torch.from_numpy(tcmr_windows(len(keep), getattr(model, "seq_len", SEQ_LEN), LEFT))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("theta", "verts", "kp_3d")}
    prec = resolve_precision(precision, device)
    for b0 in range(0, len(win), batch):
        xb = x[win[b0:b0 + batch]].to(device)
        with prec.autocast():  # GRUs and regressor in bf16/fp16 where asked; SMPL stays float32
            if isinstance(model, VIBE):  # a released VIBE: per-frame outputs, keep the window's target
                out = {k: v[:, LEFT] for k, v in model(xb).items()}
            else:
                out = model(xb, is_train=False)
        for k in parts:
            parts[k].append(out[k].float().cpu().numpy())
    theta, verts, joints = (np.concatenate(parts[k]) for k in ("theta", "verts", "kp_3d"))
    cb = contract.crop_box(boxes)
    crop = np.stack([(cb[:, 0] + cb[:, 2]) / 2, (cb[:, 1] + cb[:, 3]) / 2, cb[:, 2] - cb[:, 0],
                     cb[:, 3] - cb[:, 1]], -1).astype(np.float32)
    return {"pred_cam": theta[:, :3], "orig_cam": crop_cam_to_orig(theta[:, :3], crop, *size).astype(np.float32),
            "verts": verts.astype(np.float32), "pose": theta[:, 3:75], "betas": theta[:, 75:85],
            "joints3d": joints, "bboxes": crop, "frame_ids": frames}


def drop_tcmr_outputs(run: Any, videos: list[VideoInput]) -> None:
    """A run without ``--tcmr``: remove the meshes of an earlier run (they would not match this
    run's tracks if the 2D changed); ``features.h5`` stays, checked by its key when next used."""
    for v in videos:
        for s in ("pkl", "npz"):
            (run.out / v.video_id / f"tcmr_output.{s}").unlink(missing_ok=True)
    if run.doc["stages"].pop("tcmr", None) is not None:
        run.save()


def mesh_overlay(per_track: dict[int, dict[str, np.ndarray]], faces: np.ndarray, size: tuple[int, int],
                 alpha: float = 0.7) -> Callable[[int, np.ndarray, float, float], None]:
    """A render hook drawing every track's mesh of source frame ``i`` over the scaled frame:
    ``hook(i, image, scale_x, scale_y)``. Within a mesh the z-buffer decides; between people
    the weak-perspective scale orders them (a smaller person is farther): drawn far to near."""
    from poselift.evaluation.meshes import overlay_mesh

    w, h = size
    at = {tid: {int(f): k for k, f in enumerate(r["frame_ids"])} for tid, r in per_track.items()}

    def hook(i: int, image: np.ndarray, sx: float, sy: float) -> None:
        items = []
        for tid, r in per_track.items():
            k = at[tid].get(i)
            if k is None:
                continue
            verts = r["verts"][k].astype(np.float64)
            px = project_orig(verts, r["orig_cam"][k], w, h) * [sx, sy]
            items.append((float(r["orig_cam"][k][0]), np.concatenate([px, verts[:, 2:]], 1), verts))
        for _, vpx, verts in sorted(items, key=lambda it: it[0]):
            overlay_mesh(image, vpx, faces, alpha=alpha, normals_from=verts)
    return hook
