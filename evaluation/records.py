"""Per-sequence inputs and per-frame metric arrays for reports.

A :class:`SequenceRecord` is one evaluated video (one camera view of one take):
predictions, targets and optional masks/meshes plus the labels used for grouping.
:func:`compute_sequence` turns it into a :class:`SequenceResult` holding per-frame
metric arrays in the report unit; grouping and averaging live in ``report.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from . import metrics as M

# Metric names used as keys everywhere (JSON, markdown, protocols, plots).
FRAME_METRICS = ("mpjpe", "p_mpjpe", "n_mpjpe", "mpjve", "accel_error", "accel", "pve")
METRIC_LABELS = {
    "mpjpe": "MPJPE", "p_mpjpe": "P-MPJPE", "n_mpjpe": "N-MPJPE", "mpjve": "MPJVE",
    "accel_error": "Accel error", "accel": "Accel (pred magnitude)", "pve": "PVE",
}


@dataclass(kw_only=True)
class SequenceRecord:
    """One sequence to evaluate.

    pred, gt: (T, J, 3) in the input unit (usually metres), already aligned the way
    the protocol wants (e.g. root-relative, see ``metrics.root_align``).
    mask: optional (T,) or (T, J) bool; False frames/joints are not evaluated.
    verts, gt_verts: optional (T, V, 3) meshes for PVE (both or neither).
    fps is recorded in the output only: velocity and acceleration are per frame.
    """

    seq_id: str
    subject: str
    action: str
    pred: np.ndarray
    gt: np.ndarray
    fps: float | None = None
    camera: str | None = None
    mask: np.ndarray | None = None
    verts: np.ndarray | None = None
    gt_verts: np.ndarray | None = None
    joint_names: Sequence[str] | None = None

    def __post_init__(self) -> None:
        where = f"sequence {self.seq_id!r}"
        self.pred = np.asarray(self.pred, dtype=np.float64)
        self.gt = np.asarray(self.gt, dtype=np.float64)
        for name, arr in (("pred", self.pred), ("gt", self.gt)):
            if arr.ndim != 3 or arr.shape[-1] != 3:
                raise ValueError(f"{where}: field '{name}' must be (T, J, 3), got {arr.shape}")
        if self.pred.shape != self.gt.shape:
            raise ValueError(f"{where}: field 'pred' shape {self.pred.shape} "
                             f"!= field 'gt' shape {self.gt.shape}")
        t, j, _ = self.gt.shape
        if self.mask is not None:
            self.mask = np.asarray(self.mask)
            if self.mask.dtype != bool or self.mask.shape not in ((t,), (t, j)):
                raise ValueError(f"{where}: field 'mask' must be bool ({t},) or ({t}, {j}), "
                                 f"got {self.mask.dtype} {self.mask.shape}")
        if (self.verts is None) != (self.gt_verts is None):
            raise ValueError(f"{where}: fields 'verts' and 'gt_verts' must be given together")
        if self.verts is not None:
            self.verts = np.asarray(self.verts, dtype=np.float64)
            self.gt_verts = np.asarray(self.gt_verts, dtype=np.float64)
            if self.verts.shape != self.gt_verts.shape or self.verts.ndim != 3 \
                    or self.verts.shape[0] != t or self.verts.shape[-1] != 3:
                raise ValueError(f"{where}: fields 'verts' {self.verts.shape} and 'gt_verts' "
                                 f"{self.gt_verts.shape} must both be ({t}, V, 3)")
        if self.joint_names is not None:
            self.joint_names = [str(n) for n in self.joint_names]
            if len(self.joint_names) != j:
                raise ValueError(f"{where}: field 'joint_names' has {len(self.joint_names)} "
                                 f"names for {j} joints")

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> "SequenceRecord":
        """Build from a plain dict; an unknown or missing key is an error naming it."""
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(d) - known)
        if extra:
            raise KeyError(f"sequence record {d.get('seq_id', '?')!r}: unknown key {extra[0]!r}")
        missing = [k for k in ("seq_id", "subject", "action", "pred", "gt") if k not in d]
        if missing:
            raise KeyError(f"sequence record {d.get('seq_id', '?')!r}: missing key {missing[0]!r}")
        return cls(**dict(d))

    @property
    def n_frames(self) -> int:
        return int(self.gt.shape[0])

    @property
    def n_joints(self) -> int:
        return int(self.gt.shape[1])


@dataclass
class SequenceResult:
    """Per-frame metric arrays of one sequence, already in the report unit.

    frames[name]: mpjpe/p_mpjpe/n_mpjpe/pve (T,), mpjve (T-1,), accel_error/accel
    (T-2,); NaN marks entries not evaluated (masked). joint_err / joint_err_pa: (T, J)
    distances with NaN at masked joints. pve is absent without meshes.
    """

    seq_id: str
    subject: str
    action: str
    camera: str | None
    fps: float | None
    n_frames: int
    frames: dict[str, np.ndarray] = field(default_factory=dict)
    joint_err: np.ndarray | None = None
    joint_err_pa: np.ndarray | None = None

    def total(self, name: str) -> tuple[float, int]:
        """(sum, count) of the evaluated entries of one metric; (0, 0) when absent."""
        v = self.frames.get(name)
        if v is None:
            return 0.0, 0
        ok = ~np.isnan(v)
        return float(v[ok].sum()), int(ok.sum())

    def mean(self, name: str) -> float | None:
        s, n = self.total(name)
        return s / n if n else None

    def excluded_frames(self) -> list[list[int]]:
        """Frames without any evaluated joint, as [start, stop) ranges."""
        return _ranges(np.isnan(self.frames["mpjpe"]))

    def excluded_accel_centres(self) -> list[list[int]]:
        """Centre frames of dropped acceleration triplets, as [start, stop) ranges."""
        return [[a + 1, b + 1] for a, b in _ranges(np.isnan(self.frames["accel_error"]))]


def _ranges(flags: np.ndarray) -> list[list[int]]:
    """Runs of True in a bool array as [start, stop) pairs (compact JSON)."""
    f = np.concatenate([[False], np.asarray(flags, dtype=bool), [False]])
    edges = np.flatnonzero(f[1:] != f[:-1])
    return [[int(a), int(b)] for a, b in zip(edges[::2], edges[1::2])]


def compute_sequence(rec: SequenceRecord, scale: float = 1000.0) -> SequenceResult:
    """Compute every per-frame metric of one record, multiplied by ``scale``.

    The mask restricts the Procrustes fit, the averages and the temporal triplets;
    the acceleration magnitude (of the prediction) uses the same kept triplets as the
    acceleration error so both describe the same frames.
    """
    p, g, m = rec.pred, rec.gt, rec.mask
    jm = M.joint_mask(m, rec.n_frames, rec.n_joints)
    aligned = M.procrustes_align(p, g, m)
    err = M.joint_errors(p, g)
    err_pa = M.joint_errors(aligned, g)
    acc_err, kept = M.acceleration_error_with_mask(p, g, m)
    acc = M.acceleration(p) if rec.n_frames >= 3 else np.zeros(0)
    acc = np.where(kept, acc, np.nan)
    frames = {
        "mpjpe": M.masked_frame_mean(err, jm),
        "p_mpjpe": M.masked_frame_mean(err_pa, jm),
        "n_mpjpe": M.n_mpjpe(p, g, m),
        "mpjve": M.mpjve(p, g, m) if rec.n_frames >= 2 else np.zeros(0),
        "accel_error": acc_err,
        "accel": acc,
    }
    if rec.verts is not None:
        v = M.pve(rec.verts, rec.gt_verts)
        if m is not None and m.ndim == 1:
            v = np.where(m, v, np.nan)
        elif m is not None:
            v = np.where(m.any(axis=1), v, np.nan)
        frames["pve"] = v
    frames = {k: val * scale for k, val in frames.items()}
    return SequenceResult(
        seq_id=rec.seq_id, subject=rec.subject, action=rec.action, camera=rec.camera,
        fps=rec.fps, n_frames=rec.n_frames, frames=frames,
        joint_err=np.where(jm, err, np.nan) * scale,
        joint_err_pa=np.where(jm, err_pa, np.nan) * scale,
    )
