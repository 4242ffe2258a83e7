"""Camera model of the VideoPose3D-format Human3.6M / HumanEva-I data.

Conventions (the reference's, so its caches, 2D files and checkpoints line up):

- Extrinsics: ``orientation`` is a unit quaternion (w, x, y, z) rotating camera axes into
  world axes; ``translation`` is the camera centre in world coordinates, in metres (the
  packaged JSON holds millimetres). ``world_to_camera`` rotates ``X - t`` by the inverse
  quaternion; ``camera_to_world`` rotates by the quaternion and adds ``t``.
- Screen normalisation: ``X / w * 2 - [1, h / w]``; x spans [-1, 1], y is scaled by the
  same factor so the aspect ratio is kept (y spans [-h/w, h/w]).
- Intrinsics 9-vector ``[fx, fy, cx, cy, k1, k2, k3, p1, p2]`` in normalised units: the
  centre goes through the screen normalisation, the focal lengths are divided by ``w / 2``.
- ``project_to_2d`` is the reference's distortion model, which is *not* the textbook
  Brown-Conrady one: with ``(x, y)`` the perspective-divided point clamped to [-1, 1],
  ``r2 = x^2 + y^2``, ``radial = 1 + k1 r2 + k2 r2^2 + k3 r2^3`` and
  ``tan = p1 x + p2 y``, the distorted point is ``(x, y) * (radial + tan) + (p1, p2) * r2``,
  and the output is ``f * distorted + c``.
- Horizontal flip of a camera: negate ``cx`` (index 2) and ``p1`` (index 7); with x of the
  3D point negated this mirrors the projection exactly (tested).

HumanEva-I cameras carry only the image resolution (no intrinsics), so they support the
world/camera transforms but not projection.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

__all__ = [
    "Camera", "CAMERA_JSON", "DATASET_CAMERAS", "load_cameras", "camera_ids",
    "qrot", "qinverse", "world_to_camera", "camera_to_world",
    "normalize_screen_coordinates", "image_coordinates", "normalize_intrinsics",
    "project_to_2d", "project_to_2d_linear", "flip_camera_params",
]

Array = Union[np.ndarray, torch.Tensor]

CAMERA_JSON = Path(__file__).with_name("data") / "cameras_h36m_humaneva.json"

# Dataset name -> key in the packaged JSON.
DATASET_CAMERAS = {"h36m": "h36m", "humaneva15": "humaneva", "humaneva": "humaneva"}

# HumanEva-I subjects appear under split prefixes in the VideoPose3D files; every prefixed
# name shares the physical subject's cameras (as the reference loader does).
HUMANEVA_PREFIXES = ("Train/", "Validate/", "Unlabeled/Train/", "Unlabeled/Validate/", "Unlabeled/")


@dataclass(frozen=True)
class Camera:
    """One calibrated camera of one subject's recording.

    ``orientation`` (4,) and ``translation`` (3,) metres are None when the subject has no
    extrinsics (HumanEva S4); ``intrinsic`` (9,) normalised is None for HumanEva.
    """

    id: str
    index: int
    res_w: int
    res_h: int
    orientation: np.ndarray | None = None
    translation: np.ndarray | None = None
    intrinsic: np.ndarray | None = None
    azimuth: float = 0.0

    @property
    def image_size(self) -> list[int]:
        return [int(self.res_w), int(self.res_h)]

    @property
    def has_extrinsics(self) -> bool:
        return self.orientation is not None and self.translation is not None

    def world_to_camera(self, x: Array) -> Array:
        """(..., 3) world metres -> (..., 3) camera frame metres."""
        self._need_extrinsics()
        return world_to_camera(x, self.orientation, self.translation)

    def camera_to_world(self, x: Array) -> Array:
        """(..., 3) camera frame metres -> (..., 3) world metres."""
        self._need_extrinsics()
        return camera_to_world(x, self.orientation, self.translation)

    def _need_extrinsics(self) -> None:
        if not self.has_extrinsics:
            raise ValueError(f"camera {self.id!r} (index {self.index}) has no extrinsics")

    def to_attrs(self) -> dict[str, Any]:
        """JSON-able dict for cache attributes (float32 values, metres, normalised intrinsics)."""
        def lst(a: np.ndarray | None) -> list[float] | None:
            return None if a is None else [float(v) for v in a]

        return {"id": self.id, "index": int(self.index), "res_w": int(self.res_w),
                "res_h": int(self.res_h), "orientation": lst(self.orientation),
                "translation": lst(self.translation), "intrinsic": lst(self.intrinsic),
                "azimuth": float(self.azimuth)}

    @classmethod
    def from_attrs(cls, d: dict[str, Any]) -> "Camera":
        def arr(v: Any) -> np.ndarray | None:
            return None if v is None else np.asarray(v, dtype=np.float32)

        return cls(id=str(d["id"]), index=int(d.get("index", 0)), res_w=int(d["res_w"]),
                   res_h=int(d["res_h"]), orientation=arr(d.get("orientation")),
                   translation=arr(d.get("translation")), intrinsic=arr(d.get("intrinsic")),
                   azimuth=float(d.get("azimuth", 0.0)))


# --- screen coordinates -----------------------------------------------------------------------
def normalize_screen_coordinates(x: Array, w: float, h: float) -> Array:
    """Pixels (..., 2) -> normalised: x in [0, w] -> [-1, 1], y scaled alike and centred."""
    if x.shape[-1] != 2:
        raise ValueError(f"normalize_screen_coordinates: last dim must be 2, got shape {tuple(x.shape)}")
    if isinstance(x, torch.Tensor):
        return x / w * 2 - _like(x, [1.0, h / w])
    # numpy: subtract the offset in float64 and cast back, which is what the reference's
    # in-place assignment into float32 keypoint arrays amounts to.
    x = np.asarray(x)
    out = x / w * 2 - np.array([1.0, h / w])
    return out.astype(x.dtype) if np.issubdtype(x.dtype, np.floating) else out


def image_coordinates(x: Array, w: float, h: float) -> Array:
    """Inverse of :func:`normalize_screen_coordinates`: normalised (..., 2) -> pixels."""
    if x.shape[-1] != 2:
        raise ValueError(f"image_coordinates: last dim must be 2, got shape {tuple(x.shape)}")
    offset = _like(x, [1.0, h / w])
    return (x + offset) * w / 2


def normalize_intrinsics(center: Any, focal_length: Any, radial: Any, tangential: Any,
                         res_w: int, res_h: int) -> np.ndarray:
    """Pixel intrinsics -> the reference's normalised (9,) float32 vector
    ``[fx, fy, cx, cy, k1, k2, k3, p1, p2]`` (centre screen-normalised, focal / (w / 2))."""
    c = np.asarray(center, dtype=np.float32)
    f = np.asarray(focal_length, dtype=np.float32)
    c = ((c / res_w * 2).astype(np.float64) - np.array([1.0, res_h / res_w])).astype(np.float32)
    f = f / res_w * 2
    return np.concatenate([f, c, np.asarray(radial, dtype=np.float32),
                           np.asarray(tangential, dtype=np.float32)]).astype(np.float32)


# --- quaternions and extrinsics ---------------------------------------------------------------
def qinverse(q: Array) -> Array:
    """Inverse of unit quaternions (..., 4) (w, x, y, z): the conjugate."""
    sign = _like(q, [1.0, -1.0, -1.0, -1.0])
    return q * sign


def qrot(q: Array, v: Array) -> Array:
    """Rotate vectors v (..., 3) by unit quaternions q (..., 4), broadcasting leading dims:
    ``v + 2 w (u x v) + 2 u x (u x v)`` with q = (w, u)."""
    if q.shape[-1] != 4 or v.shape[-1] != 3:
        raise ValueError(f"qrot: expected q (..., 4) and v (..., 3), got {tuple(q.shape)}, {tuple(v.shape)}")
    w, u = q[..., :1], q[..., 1:]
    if isinstance(v, torch.Tensor):
        u, v = torch.broadcast_tensors(u, v)  # one quaternion for many points, or per point
        uv = torch.linalg.cross(u, v, dim=-1)
        uuv = torch.linalg.cross(u, uv, dim=-1)
    else:
        uv = np.cross(u, v)
        uuv = np.cross(u, uv)
    return v + 2 * (w * uv + uuv)


def world_to_camera(x: Array, r: Any, t: Any) -> Array:
    """World (..., 3) -> camera frame: rotate ``x - t`` by the inverse of quaternion ``r``."""
    r, t = _like(x, r), _like(x, t)
    return qrot(qinverse(r), x - t)


def camera_to_world(x: Array, r: Any, t: Any) -> Array:
    """Camera frame (..., 3) -> world: rotate by quaternion ``r``, add translation ``t``."""
    r, t = _like(x, r), _like(x, t)
    return qrot(r, x) + t


# --- projection -------------------------------------------------------------------------------
def _prepare(x: Array, camera_params: Array) -> tuple[torch.Tensor, torch.Tensor, bool]:
    was_numpy = not isinstance(x, torch.Tensor)
    xt = torch.as_tensor(x)
    cam = torch.as_tensor(camera_params, dtype=xt.dtype, device=xt.device)
    if xt.shape[-1] != 3:
        raise ValueError(f"project_to_2d: points must be (N, ..., 3), got {tuple(xt.shape)}")
    if cam.ndim != 2 or cam.shape[-1] != 9:
        raise ValueError(f"project_to_2d: camera_params must be (N, 9), got {tuple(cam.shape)}")
    if cam.shape[0] != xt.shape[0]:
        raise ValueError(f"project_to_2d: {xt.shape[0]} point sets but {cam.shape[0]} cameras")
    cam = cam.reshape(cam.shape[:1] + (1,) * (xt.ndim - 2) + cam.shape[1:])
    return xt, cam, was_numpy


def project_to_2d(x: Array, camera_params: Array) -> Array:
    """Full reference projection (focal, centre, k1-k3 radial, p1-p2 tangential).

    x: (N, ..., 3) camera-frame points (e.g. (B, T, J, 3)); camera_params: (N, 9)
    normalised intrinsics. Returns (N, ..., 2) normalised screen coordinates (numpy in,
    numpy out). The perspective-divided point is clamped to [-1, 1] as the reference does,
    which also keeps points behind/near the camera from exploding during training.
    """
    xt, cam, was_numpy = _prepare(x, camera_params)
    f, c, k, p = cam[..., :2], cam[..., 2:4], cam[..., 4:7], cam[..., 7:9]
    xx = torch.clamp(xt[..., :2] / xt[..., 2:], min=-1, max=1)
    r2 = (xx ** 2).sum(dim=-1, keepdim=True)
    radial = 1 + (k * torch.cat((r2, r2 ** 2, r2 ** 3), dim=-1)).sum(dim=-1, keepdim=True)
    tan = (p * xx).sum(dim=-1, keepdim=True)
    out = f * (xx * (radial + tan) + p * r2) + c
    return out.numpy() if was_numpy else out


def project_to_2d_linear(x: Array, camera_params: Array) -> Array:
    """Pinhole part only (focal and centre of the (N, 9) params); same shapes and clamp as
    :func:`project_to_2d`."""
    xt, cam, was_numpy = _prepare(x, camera_params)
    xx = torch.clamp(xt[..., :2] / xt[..., 2:], min=-1, max=1)
    out = cam[..., :2] * xx + cam[..., 2:4]
    return out.numpy() if was_numpy else out


def flip_camera_params(camera_params: Array) -> Array:
    """Camera params (..., 9) for the horizontally mirrored image: negate cx and p1."""
    if camera_params.shape[-1] != 9:
        raise ValueError(f"flip_camera_params: expected (..., 9), got {tuple(camera_params.shape)}")
    out = camera_params.clone() if isinstance(camera_params, torch.Tensor) else np.array(camera_params)
    out[..., 2] *= -1
    out[..., 7] *= -1
    return out


# --- packaged parameters ----------------------------------------------------------------------
@lru_cache(maxsize=1)
def _raw_json() -> dict[str, Any]:
    return json.loads(CAMERA_JSON.read_text())


def camera_json_sha256() -> str:
    """sha256 of the packaged camera file (part of importer input fingerprints)."""
    import hashlib

    return hashlib.sha256(CAMERA_JSON.read_bytes()).hexdigest()


def camera_ids(dataset: str) -> list[str]:
    """Camera ids in index order (H36M: '54138969', ...; HumanEva: 'C1', 'C2', 'C3')."""
    return [str(c["id"]) for c in _raw_json()[_json_key(dataset)]["intrinsic"]]


def load_cameras(dataset: str) -> dict[str, list[Camera]]:
    """{subject: [Camera per index]} from the packaged JSON, in reference units.

    Human3.6M: normalised 9-vector intrinsics, translation in metres. HumanEva-I: only
    resolution and extrinsics, keyed by every prefixed subject name the VideoPose3D files
    use (``Train/S1``, ``Validate/S1``, ``Unlabeled/Train/S1``, ...). A subject whose
    extrinsics are empty (HumanEva S4) gets cameras without extrinsics.
    """
    key = _json_key(dataset)
    raw = _raw_json()[key]
    intr = raw["intrinsic"]
    out: dict[str, list[Camera]] = {}
    for subject, extr in raw["extrinsic"].items():
        if len(extr) != len(intr):
            raise ValueError(f"{CAMERA_JSON}: {key} subject {subject} has {len(extr)} extrinsics "
                             f"for {len(intr)} cameras")
        cams = []
        for i, (ci, ce) in enumerate(zip(intr, extr)):
            w, h = int(ci["res_w"]), int(ci["res_h"])
            intrinsic = None
            if "focal_length" in ci:
                intrinsic = normalize_intrinsics(ci["center"], ci["focal_length"],
                                                 ci["radial_distortion"],
                                                 ci["tangential_distortion"], w, h)
            orient = trans = None
            if "orientation" in ce and "translation" in ce:
                orient = np.asarray(ce["orientation"], dtype=np.float32)
                trans = np.asarray(ce["translation"], dtype=np.float32) / 1000  # mm -> m
            cams.append(Camera(str(ci["id"]), i, w, h, orient, trans, intrinsic,
                               float(ci.get("azimuth", 0.0))))
        names = [subject] if key == "h36m" else [p + subject for p in HUMANEVA_PREFIXES]
        for name in names:
            out[name] = cams
    return out


def _json_key(dataset: str) -> str:
    try:
        return DATASET_CAMERAS[dataset]
    except KeyError:
        raise KeyError(f"no packaged cameras for dataset {dataset!r}; "
                       f"known: {sorted(DATASET_CAMERAS)}") from None


def _like(ref: Array, v: Any) -> Array:
    """``v`` as an array of ``ref``'s kind (torch: same dtype/device; numpy: ref's float dtype)."""
    if isinstance(ref, torch.Tensor):
        return torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v,
                               dtype=ref.dtype, device=ref.device)
    dtype = ref.dtype if np.issubdtype(np.asarray(ref).dtype, np.floating) else np.float64
    return np.asarray(v, dtype=dtype)
