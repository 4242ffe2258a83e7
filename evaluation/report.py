"""Grouped evaluation reports: per sequence, action, subject, joint and overall.

Every group average here is frame-weighted: the evaluated per-frame values of all
sequences in the group are pooled (sum / count). Protocol-specific averaging (e.g.
VideoPose3D's unweighted mean over action groups) is in ``protocols.py``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .records import (FRAME_METRICS, METRIC_LABELS, SequenceRecord, SequenceResult,
                      compute_sequence)

__all__ = ["Report", "evaluate_sequences"]


def _as_records(records: Iterable[SequenceRecord | Mapping[str, Any]]) -> list[SequenceRecord]:
    out = [r if isinstance(r, SequenceRecord) else SequenceRecord.from_mapping(r)
           for r in records]
    if not out:
        raise ValueError("evaluate_sequences: no sequences given")
    seen: set[str] = set()
    for r in out:
        if r.seq_id in seen:
            raise ValueError(f"evaluate_sequences: duplicate seq_id {r.seq_id!r}")
        seen.add(r.seq_id)
    j = out[0].n_joints
    for r in out:
        if r.n_joints != j:
            raise ValueError(f"sequence {r.seq_id!r}: {r.n_joints} joints, but sequence "
                             f"{out[0].seq_id!r} has {j}")
    return out


def _joint_names(records: list[SequenceRecord]) -> list[str]:
    named = [r for r in records if r.joint_names is not None]
    if not named:
        return [f"joint_{i}" for i in range(records[0].n_joints)]
    ref = list(named[0].joint_names or [])
    for r in named[1:]:
        if list(r.joint_names or []) != ref:
            raise ValueError(f"sequence {r.seq_id!r}: field 'joint_names' differs from "
                             f"sequence {named[0].seq_id!r}")
    return ref


def evaluate_sequences(records: Iterable[SequenceRecord | Mapping[str, Any]],
                       scale: float = 1000.0, unit: str = "mm") -> "Report":
    """Compute per-frame metrics of every sequence (separately) and return a Report.

    records: SequenceRecord objects or dicts with the same keys; pred/gt (T, J, 3) in
    the input unit. scale converts to ``unit`` (1000: metres -> mm).
    """
    recs = _as_records(records)
    names = _joint_names(recs)
    return Report(results=[compute_sequence(r, scale) for r in recs],
                  joint_names=names, unit=unit, scale=float(scale))


def _pool(results: Sequence[SequenceResult], name: str) -> dict[str, Any]:
    s, n = 0.0, 0
    for r in results:
        ds, dn = r.total(name)
        s, n = s + ds, n + dn
    return {"mean": (s / n if n else None), "count": n}


def _fmt(v: float | None, decimals: int) -> str:
    return "-" if v is None else f"{v:.{decimals}f}"


@dataclass
class Report:
    """Per-frame results of several sequences plus their grouped summaries.

    Metric values are in ``unit`` (poses), ``unit``/frame (MPJVE) and
    ``unit``/frame^2 (accelerations): nothing is divided by the frame interval, as
    in the VideoPose3D and TCMR/VIBE references.
    """

    results: list[SequenceResult]
    joint_names: list[str]
    unit: str = "mm"
    scale: float = 1000.0

    @property
    def metrics(self) -> list[str]:
        """Metric names present in at least one sequence, in canonical order."""
        return [m for m in FRAME_METRICS if any(m in r.frames for r in self.results)]

    def group(self, key: str) -> dict[str, dict[str, dict[str, Any]]]:
        """Frame-weighted metrics per value of ``key`` ('action', 'subject', 'camera').

        Returns {group: {metric: {"mean", "count"}}}, groups in first-seen order.
        """
        groups: dict[str, list[SequenceResult]] = {}
        for r in self.results:
            groups.setdefault(str(getattr(r, key)), []).append(r)
        return {g: {m: _pool(rs, m) for m in self.metrics} for g, rs in groups.items()}

    def overall(self) -> dict[str, dict[str, Any]]:
        """Frame-weighted metrics over all sequences: {metric: {"mean", "count"}}."""
        return {m: _pool(self.results, m) for m in self.metrics}

    def per_joint(self) -> dict[str, list]:
        """MPJPE and P-MPJPE per joint over all evaluated (frame, joint) pairs."""
        err = np.concatenate([r.joint_err for r in self.results], axis=0)
        err_pa = np.concatenate([r.joint_err_pa for r in self.results], axis=0)
        count = (~np.isnan(err)).sum(axis=0)

        def mean(e: np.ndarray) -> list[float | None]:
            s = np.nansum(e, axis=0)
            return [float(a / c) if c else None for a, c in zip(s, count)]

        return {"names": list(self.joint_names), "mpjpe": mean(err),
                "p_mpjpe": mean(err_pa), "count": [int(c) for c in count]}

    def frame_counts(self) -> dict[str, int]:
        total = sum(r.n_frames for r in self.results)
        evaluated = self.overall()["mpjpe"]["count"]
        return {"total": total, "evaluated": evaluated, "excluded": total - evaluated}

    def to_dict(self, include_frames: bool = False) -> dict[str, Any]:
        """JSON-ready summary; ``include_frames`` adds every per-frame array."""
        seqs = {}
        for r in self.results:
            entry: dict[str, Any] = {
                "subject": r.subject, "action": r.action, "camera": r.camera, "fps": r.fps,
                "frames": r.n_frames,
                "metrics": {m: {"mean": r.mean(m), "count": r.total(m)[1]}
                            for m in self.metrics if m in r.frames},
                "excluded_frames": r.excluded_frames(),
                "excluded_accel_centres": r.excluded_accel_centres(),
            }
            if include_frames:
                entry["per_frame"] = {m: [None if np.isnan(x) else float(x) for x in v]
                                      for m, v in r.frames.items()}
            seqs[r.seq_id] = entry
        return {
            "unit": self.unit, "scale": self.scale,
            "units": {"pose": self.unit, "mpjve": f"{self.unit}/frame",
                      "accel": f"{self.unit}/frame^2"},
            "metrics": self.metrics,
            "frames": self.frame_counts(),
            "overall": self.overall(),
            "by_action": self.group("action"),
            "by_subject": self.group("subject"),
            "by_sequence": seqs,
            "per_joint": self.per_joint(),
        }

    def write_json(self, path: str | Path, include_frames: bool = False) -> Path:
        """Write :meth:`to_dict` as JSON (atomically: temp file then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(include_frames), indent=2))
        tmp.replace(path)
        return path

    def _table(self, title: str, rows: dict[str, dict[str, dict[str, Any]]],
               decimals: int) -> list[str]:
        ms = self.metrics
        lines = [f"## {title}", "",
                 "| group | frames | " + " | ".join(METRIC_LABELS[m] for m in ms) + " |",
                 "|---|---:|" + "---:|" * len(ms)]
        for g, vals in rows.items():
            cells = [_fmt(vals[m]["mean"], decimals) for m in ms]
            lines.append(f"| {g} | {vals['mpjpe']['count']} | " + " | ".join(cells) + " |")
        return lines + [""]

    def to_markdown(self, decimals: int = 1) -> str:
        """Markdown with overall, per-action, per-subject, per-sequence, per-joint tables."""
        fc = self.frame_counts()
        out = ["# Evaluation report", "",
               f"Units: poses {self.unit}, MPJVE {self.unit}/frame, accelerations "
               f"{self.unit}/frame^2 (no division by the frame interval). All averages "
               "are frame-weighted over evaluated frames; each sequence is differenced "
               "on its own.", "",
               f"Frames: {fc['total']} total, {fc['evaluated']} evaluated, "
               f"{fc['excluded']} excluded by masks.", ""]
        out += self._table("Overall", {"all": self.overall()}, decimals)
        out += self._table("By action", self.group("action"), decimals)
        out += self._table("By subject", self.group("subject"), decimals)
        seq_rows = {r.seq_id: {m: {"mean": r.mean(m), "count": r.total(m)[1]}
                               for m in self.metrics} for r in self.results}
        out += self._table("By sequence", seq_rows, decimals)
        excl = [(r.seq_id, r.excluded_frames()) for r in self.results if r.excluded_frames()]
        if excl:
            out += ["Excluded frames ([start, stop) ranges):", ""]
            out += [f"- {sid}: {rng}" for sid, rng in excl] + [""]
        pj = self.per_joint()
        out += ["## Per joint", "", "| joint | frames | MPJPE | P-MPJPE |", "|---|---:|---:|---:|"]
        for name, c, a, b in zip(pj["names"], pj["count"], pj["mpjpe"], pj["p_mpjpe"]):
            out.append(f"| {name} | {c} | {_fmt(a, decimals)} | {_fmt(b, decimals)} |")
        return "\n".join(out) + "\n"

    def write_markdown(self, path: str | Path, decimals: int = 1) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_markdown(decimals))
        return path
