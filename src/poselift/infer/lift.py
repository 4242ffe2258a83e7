"""Per-track lifting with VideoPose3D's in-the-wild conventions (inference.md §1).

* frames of a track without a detection are filled by linear interpolation per coordinate
  (``np.interp`` over the frames that have one; the first / last value is held outside);
* 2D is normalised by the video's width: x' = x / w * 2 - 1, y' = y / w * 2 - h / w;
* the 2D layout is converted to the lifter's input joint set (Halpe-26/136 -> COCO-17, COCO-17
  -> H36M-17, ...) with :func:`poselift.datasets.joints.conversion_matrix`;
* the whole track runs in one pass, edge-padded by the receptive field's half on both sides
  (so tracks shorter than the receptive field still get one prediction per frame), with flip
  test-time augmentation and, when the checkpoint has one, the trajectory model's root added.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from poselift.datasets.joints import conversion_matrix, get_joint_set
from poselift.lifting.videopose3d.infer import predict_sequence
from poselift.lifting.videopose3d.model import TemporalModel

__all__ = ["Lifter", "load_any_lifter", "interpolate_missing", "normalize_by_width", "to_lifter_joints",
           "JointSetMismatch", "lift_track"]


class JointSetMismatch(ValueError):
    """The 2D joint set cannot be converted to the lifter's input joint set."""


@dataclass
class Lifter:
    """A loaded lifter: pose model (and trajectory model), joint sets, receptive field."""

    model: TemporalModel
    traj: TemporalModel | None
    joints_in: str
    joints_out: str
    causal: bool
    identity: dict[str, Any]

    @property
    def receptive_field(self) -> int:
        return int(self.model.receptive_field())


def _default_joint_sets(j_in: int, j_out: int, where: str) -> tuple[str, str]:
    # VideoPose3D's released in-the-wild checkpoint: COCO-ordered 17 inputs, H36M-17 outputs.
    sets = {17: ("coco17", "h36m17"), 15: ("humaneva15", "humaneva15")}
    if j_in not in sets or j_out not in sets:
        raise ValueError(f"{where}: a lifter with {j_in} input / {j_out} output joints has no default "
                         f"joint sets; give --lifter-joints-in and --lifter-joints-out")
    return sets[j_in][0], sets[j_out][1]


def load_any_lifter(path: str | os.PathLike, *, joints_in: str | None = None, joints_out: str | None = None,
                    causal: bool = False, device: str | torch.device = "cpu",
                    trust_pickle: bool = False) -> Lifter:
    """A VideoPose3D ``.bin`` (``model_pos`` / ``model_traj``) or a poselift lifter checkpoint.

    Joint sets: a poselift checkpoint stores them; a ``.bin`` does not, so 17 inputs are read as
    COCO-17 and 17 outputs as H36M-17 (the released detectron-COCO model) unless given."""
    from poselift.extract.backbones import file_sha256
    from poselift.lifting.checkpoint import load_checkpoint
    from poselift.lifting.videopose3d.eval import load_lifter
    from poselift.lifting.videopose3d.interop import load_videopose3d

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such lifter checkpoint")
    is_poselift = True
    try:
        ckpt = load_checkpoint(p, map_location="cpu")
    except Exception:  # noqa: BLE001 - not a poselift checkpoint: try the VideoPose3D layout
        is_poselift = False
    if is_poselift:
        model, ckpt = load_lifter(p, device)
        extra = ckpt.get("extra") or {}
        info = extra.get("data") or extra
        j_in = joints_in or info.get("joints_in")
        j_out = joints_out or info.get("joints_out")
        if not (j_in and j_out):
            j_in, j_out = _default_joint_sets(model.num_joints_in, model.num_joints_out, str(p))
        traj = None
        if extra.get("traj_state_dict"):
            traj = TemporalModel(**{**ckpt["model_args"], "num_joints_out": 1})
            traj.load_state_dict(extra["traj_state_dict"])
            traj = traj.to(device).eval()
        causal = bool(ckpt["model_args"].get("causal", False))
    else:
        model, traj = load_videopose3d(p, causal=causal, map_location=str(device), trust_pickle=trust_pickle)
        dj_in, dj_out = _default_joint_sets(model.num_joints_in, model.num_joints_out, str(p))
        j_in, j_out = joints_in or dj_in, joints_out or dj_out
    for name, js, n in (("input", j_in, model.num_joints_in), ("output", j_out, model.num_joints_out)):
        if get_joint_set(js).num_joints != n:
            raise ValueError(f"{p}: the lifter has {n} {name} joints but joint set {js!r} has "
                             f"{get_joint_set(js).num_joints}")
    ident = {"file": str(p.resolve()), "sha256": file_sha256(p), "joints_in": j_in, "joints_out": j_out,
             "causal": causal, "trajectory": traj is not None}
    return Lifter(model.eval(), traj, j_in, j_out, causal, ident)


def interpolate_missing(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(T, ...) values with (T,) validity -> every invalid frame linearly interpolated per
    coordinate from the valid ones (held constant before the first / after the last)."""
    x = np.asarray(x, np.float64)
    valid = np.asarray(valid, bool)
    if valid.all():
        return x.copy()
    if not valid.any():
        raise ValueError("no valid frame to interpolate from")
    t = np.arange(len(x))
    flat = x.reshape(len(x), -1)
    out = np.empty_like(flat)
    for c in range(flat.shape[1]):
        out[:, c] = np.interp(t, t[valid], flat[valid, c])
    return out.reshape(x.shape)


def normalize_by_width(kp: np.ndarray, w: int, h: int) -> np.ndarray:
    """(..., 2) px -> VideoPose3D screen coordinates (x in [-1, 1], aspect kept)."""
    out = np.asarray(kp, np.float64) / w * 2.0
    out[..., 0] -= 1.0
    out[..., 1] -= h / w
    return out.astype(np.float32)


def to_lifter_joints(kp: np.ndarray, src: str, dst: str) -> np.ndarray:
    """(T, J_src, 2) -> (T, J_dst, 2); an impossible conversion raises one line naming both sets."""
    try:
        m = conversion_matrix(src, dst)
    except KeyError:
        raise JointSetMismatch(f"2D keypoints are in joint set {src!r} but the lifter takes {dst!r}: "
                               f"poselift has no conversion between them") from None
    return np.einsum("dj,tjc->tdc", m, kp).astype(np.float32)


def lift_track(lifter: Lifter, kp_px: np.ndarray, valid: np.ndarray, joint_set: str, image_size: tuple[int, int],
               *, flip: bool = True, device: str | torch.device = "cpu",
               precision: str | None = None) -> np.ndarray:
    """One track: (T, J, 2) px keypoints with (T,) validity -> (T, J_out, 3) metres, camera frame
    (root-relative, plus the predicted root position when the lifter has a trajectory model).
    ``precision`` (fp32 | bf16 | fp16 | auto; None = fp32) is the lifter's forward precision."""
    w, h = image_size
    filled = interpolate_missing(kp_px, valid)
    x = normalize_by_width(to_lifter_joints(filled, joint_set, lifter.joints_in), w, h)
    pad = (lifter.receptive_field - 1) // 2
    shift = pad if lifter.causal else 0
    f_in = get_joint_set(lifter.joints_in).flip_permutation() if flip else None
    f_out = get_joint_set(lifter.joints_out).flip_permutation() if flip else None
    prec = precision or "fp32"
    pose = predict_sequence(lifter.model, x, pad=pad, causal_shift=shift, flip_in=f_in, flip_out=f_out,
                            device=device, precision=prec)
    if lifter.traj is not None:
        tpad = (lifter.traj.receptive_field() - 1) // 2
        root = predict_sequence(lifter.traj, x, pad=tpad, causal_shift=tpad if lifter.causal else 0,
                                flip_in=f_in, flip_out=np.zeros(1, np.int64) if flip else None, device=device,
                                precision=prec)
        pose = pose + root
    return pose.astype(np.float32)
