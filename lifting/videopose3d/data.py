"""Data for 2D->3D lifters: caches -> normalised 2D inputs and root-relative 3D targets.

Caches keep 2D keypoints in pixels and 3D joints absolute in the camera frame (metres);
the VideoPose3D conventions are applied here, at read time:
- 2D: ``normalize_screen_coordinates`` per video (x in [-1, 1], aspect ratio kept);
- 3D pose target: joints relative to joint 0, joint 0 itself zero;
- trajectory target: joint 0's camera-frame position.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from poselift.datasets.cache import Cache, CacheError, common_sequences
from poselift.datasets.joints import get_joint_set
from poselift.datasets.protocols import select
from poselift.datasets.window_dataset import CacheWindowDataset, Field, FlipRule
from poselift.datasets.windows import Windows, make_windows, segments_from_lengths

__all__ = ["LiftData", "image_sizes", "normalize_pixels", "root_relative"]


def image_sizes(cache: Cache, ids: list[str]) -> np.ndarray:
    """(S, 2) float64 [w, h] per sequence from the cache attribute ``image_size``."""
    wh = []
    for sid in ids:
        size = cache.info(sid).attrs.get("image_size")
        if size is None or len(size) != 2:
            raise CacheError(f"{cache.path}: sequence {sid!r} has no 'image_size' attribute "
                             f"(needed to normalise pixel keypoints)")
        wh.append(size)
    return np.asarray(wh, dtype=np.float64)


def normalize_pixels(x: np.ndarray, w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """VideoPose3D screen normalisation ``X / w * 2 - [1, h / w]`` with per-row w, h.
    x: (B, ..., 2); w, h: (B,)."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    w, h = w.reshape(shape), h.reshape(shape)
    out = x / w * 2.0
    out[..., 0] -= 1.0
    out[..., 1] -= (h / w)[..., 0]
    return out.astype(np.float32)


def root_relative(x: np.ndarray) -> np.ndarray:
    """(..., J, 3) -> joints minus joint 0 (joint 0 becomes exactly 0)."""
    return x - x[..., :1, :]


@dataclass
class LiftData:
    """Joined 2D and ground-truth caches for one split."""

    gt: Cache
    kp: Cache
    ids: list[str]
    frames: dict[str, slice]  # per sequence: the frames used (subset / downsample)

    @classmethod
    def open(cls, gt_path: str, kp_path: str, subjects: list[str], actions: list[str] | None = None,
             subset: float = 1.0, downsample: int = 1, *, dataset: str | None = None,
             joints_in: str | None = None, joints_out: str | None = None) -> "LiftData":
        """Join the caches; ``dataset`` / ``joints_in`` / ``joints_out`` (None or "" = any)
        are checked against the cache headers and a mismatch raises ``CacheMismatchError``
        naming the file and the field."""
        gt = Cache(gt_path, kind="gt", dataset=dataset or None, joint_set=joints_out or None)
        kp = Cache(kp_path, kind="keypoints2d", dataset=dataset or None, joint_set=joints_in or None)
        if gt.header.dataset != kp.header.dataset:
            raise CacheError(f"{kp_path} is for dataset {kp.header.dataset!r} but {gt_path} is for "
                             f"{gt.header.dataset!r}")
        joined = set(common_sequences(gt, kp))
        chosen = [s for s in select(gt, subjects, actions or None, subset, downsample)
                  if s.seq_id in joined]
        if not chosen:
            raise CacheError(f"no sequences of subjects {subjects} (actions {actions or 'all'}) are in "
                             f"both {gt_path} and {kp_path}")
        return cls(gt, kp, [c.seq_id for c in chosen], {c.seq_id: c.frames for c in chosen})

    @property
    def joints_in(self) -> str:
        return self.kp.header.joint_set or ""

    @property
    def joints_out(self) -> str:
        return self.gt.header.joint_set or ""

    def lengths(self) -> np.ndarray:
        return np.array([len(range(*self.frames[s].indices(self.gt.info(s).n_frames)))
                         for s in self.ids], np.int64)

    def windows(self, left: int, right: int, chunk: int) -> Windows:
        return make_windows(segments_from_lengths(self.lengths()), left=left, right=right,
                            n_targets=chunk)

    def dataset(self, windows: Windows, flip: str | None, with_trajectory: bool) -> CacheWindowDataset:
        wh = image_sizes(self.kp, self.ids)
        js_in, js_out = get_joint_set(self.joints_in), get_joint_set(self.joints_out)
        fields = {
            "kp2d": Field(self.kp, "keypoints", "inputs", preload=True,
                          transform=lambda a, s: normalize_pixels(a, wh[s, 0], wh[s, 1]),
                          flip=FlipRule(js_in.flip_permutation())),
            "pose3d": Field(self.gt, "joints_3d", "targets", preload=True,
                            transform=lambda a, s: root_relative(a),
                            flip=FlipRule(js_out.flip_permutation())),
        }
        if with_trajectory:
            fields["traj"] = Field(self.gt, "joints_3d", "targets", preload=True,
                                   transform=lambda a, s: np.ascontiguousarray(a[..., :1, :]),
                                   flip=FlipRule(np.zeros(1, np.int64)))
        return CacheWindowDataset(fields, self.ids, windows, flip=flip, frames=self.frames)

    def sequence_inputs(self, sid: str) -> np.ndarray:
        """Whole normalised 2D sequence (T, J_in, 2) for inference."""
        wh = image_sizes(self.kp, [sid])
        kp = self.kp.read(sid, "keypoints")[self.frames[sid]]
        _require_finite(self.kp, sid, "keypoints", kp, self.frames[sid])
        return normalize_pixels(kp[None], wh[:, 0], wh[:, 1])[0]

    def sequence_targets(self, sid: str) -> np.ndarray:
        """Absolute camera-frame 3D joints (T, J_out, 3)."""
        y = self.gt.read(sid, "joints_3d")[self.frames[sid]].astype(np.float32)
        _require_finite(self.gt, sid, "joints_3d", y, self.frames[sid])
        return y


def _require_finite(cache: Cache, sid: str, field: str, arr: np.ndarray, sl: slice) -> None:
    """Evaluation reads whole sequences outside the window dataset: refuse NaN/inf here too,
    naming the stored frame (a NaN input would surface only as 'SVD did not converge')."""
    bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(1)
    if bad.any():
        first = (sl.start or 0) + int(np.flatnonzero(bad)[0]) * (sl.step or 1)
        raise CacheError(f"{cache.path}: sequence {sid!r}, field {field!r}: NaN/inf at frame {first} "
                         f"({int(bad.sum())} frame(s) affected); the cache is corrupt, rebuild this "
                         f"sequence")
