"""Published evaluation protocols on top of :class:`~poselift.evaluation.report.Report`.

VideoPose3D (run.py final evaluation)
    Actions are grouped by the name part before the first space ("Walking 1 chunk0"
    -> "Walking"), optionally filtered by name prefixes. Within a group, every
    sequence (one camera of one take) contributes its mean error weighted by its
    number of evaluated frames; the "action-wise average" is the UNWEIGHTED mean over
    groups. MPJVE uses the same per-sequence frame weight T (not T-1), as the
    reference accumulates ``T * mean_velocity_error``. ``by_subject`` repeats all of
    it per subject (HumanEva-I style); otherwise all test subjects are pooled.

TCMR/VIBE
    Metrics per video, then the mean over all evaluated frames of all videos, i.e.
    :meth:`Report.overall`; :func:`tcmr_summary` just names the numbers the way the
    TCMR tables do (their "Accel" is the acceleration error).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from .records import SequenceResult
from .report import Report

__all__ = ["action_group", "ProtocolTable", "ProtocolResult", "videopose3d_protocol",
           "tcmr_summary"]

VP3D_COLUMNS = ("p1", "p2", "p3", "mpjve")
VP3D_SOURCES = {"p1": "mpjpe", "p2": "p_mpjpe", "p3": "n_mpjpe", "mpjve": "mpjve"}
VP3D_HEADERS = {"p1": "P1 (MPJPE)", "p2": "P2 (P-MPJPE)", "p3": "P3 (N-MPJPE)",
                "mpjve": "MPJVE"}


def action_group(action: str) -> str:
    """VideoPose3D action group: the part before the first space."""
    return action.split(" ")[0]


@dataclass
class ProtocolTable:
    """One action-wise table: rows[group] = {"p1", "p2", "p3", "mpjve", "frames"}."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def average(self) -> dict[str, float | None]:
        """Unweighted mean over action groups of each column (None if no group has it)."""
        out: dict[str, float | None] = {}
        for c in VP3D_COLUMNS:
            vals = [r[c] for r in self.rows.values() if r[c] is not None]
            out[c] = sum(vals) / len(vals) if vals else None
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "average": self.average}


@dataclass
class ProtocolResult:
    """Tables keyed by subject (``by_subject``) or by "all"; values in ``unit``."""

    tables: dict[str, ProtocolTable]
    unit: str = "mm"
    by_subject: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": "videopose3d", "unit": self.unit, "by_subject": self.by_subject,
                "grouping": "action name before the first space; frame-weighted within a "
                            "group; Average = unweighted mean over groups",
                "tables": {k: t.to_dict() for k, t in self.tables.items()}}

    def to_markdown(self, decimals: int = 1) -> str:
        """One table per subject (or one for all): rows actions + Average."""
        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.{decimals}f}"

        lines: list[str] = []
        for key, table in self.tables.items():
            title = f"Subject {key}" if self.by_subject else "All subjects"
            lines += [f"### {title} ({self.unit})", "",
                      "| Action | frames | " + " | ".join(VP3D_HEADERS[c] for c in VP3D_COLUMNS)
                      + " |", "|---|---:|" + "---:|" * len(VP3D_COLUMNS)]
            for action, row in table.rows.items():
                lines.append(f"| {action} | {row['frames']} | "
                             + " | ".join(fmt(row[c]) for c in VP3D_COLUMNS) + " |")
            avg = table.average
            lines.append("| **Average** | | "
                         + " | ".join(fmt(avg[c]) for c in VP3D_COLUMNS) + " |")
            lines.append("")
        return "\n".join(lines)


def _weighted(results: Sequence[SequenceResult], metric: str) -> float | None:
    """Sum over sequences of (sequence mean * evaluated frames) / total frames."""
    num, den = 0.0, 0
    for r in results:
        mean = r.mean(metric)
        w = r.total("mpjpe")[1]
        if mean is None or w == 0:
            continue
        num, den = num + mean * w, den + w
    return num / den if den else None


def _table(results: Sequence[SequenceResult]) -> ProtocolTable:
    groups: dict[str, list[SequenceResult]] = {}
    for r in results:
        groups.setdefault(action_group(r.action), []).append(r)
    table = ProtocolTable()
    for g, rs in groups.items():
        row: dict[str, Any] = {c: _weighted(rs, VP3D_SOURCES[c]) for c in VP3D_COLUMNS}
        row["frames"] = sum(r.total("mpjpe")[1] for r in rs)
        table.rows[g] = row
    return table


def videopose3d_protocol(report: Report, by_subject: bool = False,
                         actions: Iterable[str] | None = None) -> ProtocolResult:
    """VideoPose3D action-wise evaluation (P1, P2, P3, MPJVE) of a Report.

    actions: optional name prefixes; a sequence is kept if its full action name
    starts with any of them (the reference's ``-a`` filter). Raises if nothing is left.
    """
    prefixes = None if actions is None else tuple(actions)
    kept = [r for r in report.results
            if prefixes is None or r.action.startswith(prefixes)]
    if not kept:
        raise ValueError(f"videopose3d_protocol: no sequence matches actions {prefixes}")
    if by_subject:
        subjects: dict[str, list[SequenceResult]] = {}
        for r in kept:
            subjects.setdefault(r.subject, []).append(r)
        tables = {s: _table(rs) for s, rs in subjects.items()}
    else:
        tables = {"all": _table(kept)}
    return ProtocolResult(tables=tables, unit=report.unit, by_subject=by_subject)


def tcmr_summary(report: Report) -> dict[str, float | None]:
    """TCMR table numbers: pooled over all evaluated frames of all videos.

    Keys: mpjpe, pa_mpjpe, pve (None without meshes), accel_error (TCMR's "Accel",
    VIBE's ACCEL_ERR) and accel (VIBE's ACCEL, magnitude of the prediction).
    """
    o = report.overall()

    def get(m: str) -> float | None:
        return o[m]["mean"] if m in o else None

    return {"mpjpe": get("mpjpe"), "pa_mpjpe": get("p_mpjpe"), "pve": get("pve"),
            "accel_error": get("accel_error"), "accel": get("accel")}
