"""TCMR data from caches: 16-frame windows, targets in TCMR's conventions, mixed batches.

A *source* is one imported dataset: ``<cache_dir>/<name>_features.h5`` (kind features) plus
``<name>_gt.h5`` (3D data) or ``<name>_keypoints2d.h5`` (2D-only data), joined by sequence id.

Windows: 16 frames = 8 before + target + 7 after (target = index 8). Sequences
are split where ``frame_index`` jumps (3DPW drops frames), so no window crosses a sequence or
a gap. Training windows lie fully inside a segment (segments < 16 frames are skipped; no
duplicated edge windows as in the reference); ``stride = int(16 * (1 - overlap) + 0.5)``.
Evaluation windows: one per frame, border frames as 16 copies of the target frame
(``pad='repeat_target'``, TCMR's test layout) or edge replication (``pad='edge'``).

Targets (middle frame only) are float32, not float16 as in the reference datasets:
* ``kp_2d`` (B, 49, 3) SPIN-49 order, x/y in [-1, 1] crop coordinates, conf (0 for joints
  the source lacks). Image-pixel keypoints are mapped into the crop of the cached bbox
  [cx, cy, w, h] times the fixed scale 1.2 (as ``transfrom_keypoints``):
  ``x' = 2 (x - cx) / (1.2 w)``; Insta keypoints are already 224-crop pixels: ``2x/224 - 1``.
* ``kp_3d`` (B, 49, 3) metres (zeros where the source lacks a joint); ``theta`` (B, 85) =
  [1, 0, 0, pose 72, betas 10]; ``w_3d``, ``w_smpl`` (B,).
Wide features are always read lazily (one HDF5 read per window); small label fields are
preloaded only when they take less than ``PRELOAD_LIMIT`` bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from poselift.datasets.cache import Cache, CacheError, common_sequences
from poselift.datasets.joints import SPIN49, get_joint_set
from poselift.datasets.window_dataset import CacheWindowDataset, Field
from poselift.datasets.windows import Windows, make_windows, split_at_gaps

__all__ = ["SEQ_LEN", "LEFT", "RIGHT", "KP_SCALE", "tcmr_stride", "spin49_index", "TCMRSource",
           "open_source", "source_paths", "train_windows", "eval_windows", "TCMRWindowData",
           "MixedBatchSampler", "crop_normalise"]

SEQ_LEN, LEFT, RIGHT = 16, 8, 7
KP_SCALE = 1.2  # fixed bbox scale of the reference's 2D-target transform
PRELOAD_LIMIT = 256 << 20


def tcmr_stride(overlap: float, seq_len: int = SEQ_LEN) -> int:
    """TCMR's ``int(seq_len * (1 - overlap) + 0.5)`` (VIBE has no +0.5)."""
    stride = int(seq_len * (1 - overlap) + 0.5)
    if stride < 1:
        raise ValueError(f"overlap {overlap} gives stride {stride}; use overlap < 1")
    return stride


def spin49_index(layout: str) -> np.ndarray:
    """(J_src,) SPIN-49 slot of every joint of ``layout`` (lsp14, spin49, insta25)."""
    if layout == "spin49":
        return np.arange(49)
    if layout == "lsp14":
        return np.arange(25, 39)  # SPIN's 24 "GT" joints start with the LSP-14
    js = get_joint_set(layout)
    missing = [n for n in js.names if n not in SPIN49.names]
    if missing:
        raise KeyError(f"joint layout {layout!r} cannot be mapped to SPIN-49 (no {missing[0]!r})")
    return np.array([SPIN49.names.index(n) for n in js.names])


def crop_normalise(kp: np.ndarray, bbox: np.ndarray | None) -> np.ndarray:
    """(B, J, 2) pixels -> [-1, 1]: into the 1.2x bbox crop (bbox (B, 4) cx, cy, w, h), or
    from 224-crop pixels when ``bbox`` is None."""
    if bbox is None:
        return kp * (2.0 / 224.0) - 1.0
    c, wh = bbox[:, None, :2], bbox[:, None, 2:] * KP_SCALE
    return 2.0 * (kp - c) / wh


def source_paths(cache_dir: str | Path, name: str) -> tuple[Path, Path]:
    """(features cache, labels cache) of a source; labels = gt if present else keypoints2d."""
    d = Path(cache_dir)
    feats = d / f"{name}_features.h5"
    for suffix in ("gt", "keypoints2d"):
        if (d / f"{name}_{suffix}.h5").exists():
            return feats, d / f"{name}_{suffix}.h5"
    raise FileNotFoundError(f"source {name!r}: neither {name}_gt.h5 nor {name}_keypoints2d.h5 "
                            f"in {d}")


@dataclass
class TCMRSource:
    """One dataset: joined caches, sequence ids, segments (S, 3) [seq, start, length]."""

    name: str
    features: Cache
    labels: Cache
    ids: list[str]
    segments: np.ndarray
    layouts: dict[str, str]
    use_smpl: bool

    @property
    def is_3d(self) -> bool:
        return self.labels.header.kind == "gt"

    @property
    def feat_dim(self) -> int:
        return int(self.features.dataset(self.ids[0], "features").shape[1])


def open_source(cache_dir: str | Path, name: str, *, feat_dim: int | None = None,
                use_smpl: bool = True) -> TCMRSource:
    """Open and check one source (feature width, joined lengths, joint layouts)."""
    fpath, lpath = source_paths(cache_dir, name)
    feats = Cache(fpath, kind="features")
    labels = Cache(lpath)
    if labels.header.kind not in ("gt", "keypoints2d"):
        raise CacheError(f"{lpath}: kind {labels.header.kind!r}, expected 'gt' or 'keypoints2d'")
    ids = common_sequences(feats, labels)
    if not ids:
        raise CacheError(f"{fpath} and {lpath} share no sequence ids")
    layouts = dict(labels.header.extra.get("layouts") or {})
    if not layouts and labels.header.joint_set:
        layouts = {"keypoints": labels.header.joint_set, "joints_3d": labels.header.joint_set}
    for field in ("keypoints",) + (("joints_3d",) if labels.header.kind == "gt" else ()):
        if field not in layouts:
            raise CacheError(f"{lpath}: no joint layout recorded for field {field!r}")
        try:
            spin49_index(layouts[field])
        except KeyError as e:
            raise CacheError(f"{lpath}: field {field!r}: {e.args[0]}") from None
    src = TCMRSource(name, feats, labels, ids, np.zeros((0, 3), np.int64), layouts,
                     use_smpl and bool(labels.header.extra.get("smpl", False)))
    width = src.feat_dim
    if feat_dim is not None and width != feat_dim:
        raise CacheError(f"{fpath}: field 'features' is {width} wide, the model expects "
                         f"{feat_dim} (features of another backbone?)")
    segs = []
    for i, sid in enumerate(ids):
        info = feats.info(sid)
        fi = (feats.read(sid, "frame_index") if "frame_index" in info.fields
              else np.arange(info.n_frames))
        segs.append(split_at_gaps(fi, seq=i))
    src.segments = np.concatenate(segs).astype(np.int64)
    return src


def train_windows(src: TCMRSource, stride: int) -> Windows:
    """Full 16-frame windows inside segments; an error names the file if there are none."""
    w = make_windows(src.segments, left=LEFT, right=RIGHT, n_targets=1, stride=stride,
                     pad="none", min_length=SEQ_LEN)
    if len(w) == 0:
        k = int(np.argmax(src.segments[:, 2]))
        raise CacheError(f"{src.features.path}: no 16-frame training window: the longest gap-free "
                         f"segment has {int(src.segments[k, 2])} frames (sequence "
                         f"{src.ids[int(src.segments[k, 0])]!r})")
    return w


def eval_windows(src: TCMRSource, pad: str = "repeat_target") -> Windows:
    """One window per frame of every segment (targets in frame order per sequence)."""
    if pad not in ("repeat_target", "edge"):
        raise ValueError(f"pad must be 'repeat_target' (TCMR) or 'edge', got {pad!r}")
    return make_windows(src.segments, left=LEFT, right=RIGHT, n_targets=1, stride=1, pad=pad)


class TCMRWindowData:
    """Windows of one source -> batches of features and middle-frame targets."""

    def __init__(self, src: TCMRSource, windows: Windows, *, labels: bool = True) -> None:
        self.src, self.windows = src, windows
        lab = src.labels
        fields = {"features": Field(src.features, "features", "inputs")}
        if labels:
            info = lab.info(src.ids[0])
            small = {"keypoints": "kp", "scores": "scores", "bbox_cxcywh": "bbox"}
            if src.is_3d:
                small.update({"joints_3d": "j3d"})
                if src.use_smpl:
                    small.update({"smpl_pose": "pose", "smpl_shape": "shape"})
            for field, key in small.items():
                if field not in info.fields:
                    if field == "bbox_cxcywh" and lab.header.extra.get("keypoints_frame") == "crop224":
                        continue
                    raise CacheError(f"{lab.path}: sequence {src.ids[0]!r} has no field {field!r} "
                                     f"(needed for TCMR targets)")
                per_frame = int(np.prod(lab.dataset(src.ids[0], field).shape[1:])) * 4
                fields[key] = Field(lab, field, "targets",
                                    preload=per_frame * lab.total_frames < PRELOAD_LIMIT)
        self.ds = CacheWindowDataset(fields, src.ids, windows)
        self.kp_idx = spin49_index(src.layouts["keypoints"])
        self.j3d_idx = spin49_index(src.layouts["joints_3d"]) if src.is_3d and labels else None

    def __len__(self) -> int:
        return len(self.windows)

    def get_batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """features (B, 16, D) float32; kp_2d (B, 49, 3); kp_3d (B, 49, 3) and theta (B, 85)
        for 3D sources; w_3d, w_smpl (B,); seq (B,), frame (B,) target frame index."""
        b = self.ds.get_batch(np.asarray(idx, dtype=np.int64))
        feats = b["features"]
        bad = ~torch.isfinite(feats)
        if bool(bad.any()):
            row = int(torch.nonzero(bad.flatten(1).any(1))[0])
            sid = self.src.ids[int(b["seq"][row])]
            raise CacheError(f"{self.src.features.path}: sequence {sid!r}: NaN/inf features in the "
                             f"window around frame {int(b['target_frames'][row, 0])}")
        out = {"features": feats, "seq": b["seq"], "frame": b["target_frames"][:, 0]}
        if "kp" not in b:
            return out
        n = feats.shape[0]
        kp = b["kp"][:, 0].numpy().astype(np.float64)
        bbox = b["bbox"][:, 0].numpy().astype(np.float64) if "bbox" in b else None
        kp2d = np.zeros((n, 49, 3), np.float32)
        kp2d[:, self.kp_idx, :2] = crop_normalise(kp, bbox)
        kp2d[:, self.kp_idx, 2] = b["scores"][:, 0].numpy()
        out["kp_2d"] = torch.from_numpy(kp2d)
        if self.j3d_idx is not None:
            kp3d = np.zeros((n, 49, 3), np.float32)
            kp3d[:, self.j3d_idx] = b["j3d"][:, 0].numpy()
            theta = np.zeros((n, 85), np.float32)
            theta[:, 0] = 1.0
            if "pose" in b:
                theta[:, 3:75] = b["pose"][:, 0].numpy()
                theta[:, 75:] = b["shape"][:, 0].numpy()
            out.update(kp_3d=torch.from_numpy(kp3d), theta=torch.from_numpy(theta),
                       w_3d=torch.ones(n), w_smpl=torch.full((n,), float("pose" in b)))
        return out


class MixedBatchSampler:
    """Which windows form training step ``s``: a pure function of (seed, step).

    ``n_2d = int(batch_size * ratio_2d)`` samples come from the 2D group and the rest from
    the 3D group (all from one group if the other is empty). Within a group, ``balanced=False``
    draws proportionally to dataset size (a shuffled concatenation, reshuffled per pass, as
    the reference's ConcatDataset loaders); ``balanced=True`` picks the dataset uniformly.
    """

    def __init__(self, sizes_2d: list[int], sizes_3d: list[int], batch_size: int = 32,
                 ratio_2d: float = 0.6, balanced: bool = False, seed: int = 1) -> None:
        if not sizes_2d and not sizes_3d:
            raise ValueError("no training data: both the 2D and the 3D group are empty")
        if any(s <= 0 for s in sizes_2d + sizes_3d):
            raise ValueError(f"every dataset needs windows, got sizes 2D {sizes_2d}, 3D {sizes_3d}")
        n_2d = int(batch_size * ratio_2d) if sizes_2d else 0
        if not sizes_3d:
            n_2d = batch_size
        self.take = (n_2d, batch_size - n_2d)
        self.sizes = (list(sizes_2d), list(sizes_3d))
        self.offsets = tuple(np.concatenate([[0], np.cumsum(s)]).astype(np.int64) for s in self.sizes)
        self.balanced, self.seed = balanced, seed
        self._perm: dict[int, tuple[int, np.ndarray]] = {}

    def _permutation(self, g: int, cycle: int) -> np.ndarray:
        cached = self._perm.get(g)
        if cached is None or cached[0] != cycle:
            total = int(self.offsets[g][-1])
            cached = (cycle, np.random.default_rng([self.seed, g, cycle]).permutation(total))
            self._perm[g] = cached
        return cached[1]

    def group_batch(self, g: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(dataset index, window index) arrays of group g (0 = 2D, 1 = 3D) at ``step``."""
        k = self.take[g]
        if k == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        if self.balanced:
            rng = np.random.default_rng([self.seed, g, step, 7])
            ds = rng.integers(len(self.sizes[g]), size=k)
            win = (rng.random(k) * np.asarray(self.sizes[g])[ds]).astype(np.int64)
            return ds.astype(np.int64), win
        total = int(self.offsets[g][-1])
        pos = step * k + np.arange(k)
        flat = np.empty(k, np.int64)
        for c in np.unique(pos // total):
            sel = pos // total == c
            flat[sel] = self._permutation(g, int(c))[pos[sel] % total]
        ds = np.searchsorted(self.offsets[g], flat, side="right") - 1
        return ds, flat - self.offsets[g][ds]
