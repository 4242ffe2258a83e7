"""Evaluate a temporal-convolution lifter on caches and write the report.

Outputs in ``out_dir``: ``report.json`` (per sequence / action / subject / joint, with
the evaluated frame counts), ``report.md``, ``protocol.md`` / ``protocol.json``
(VideoPose3D's per-action table: P1, P2, P3, MPJVE), PNG plots, and ``predictions.npz`` in the format
``poselift-evaluate predictions`` reads, so numbers can be recomputed without a model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from poselift.core.device import resolve_device
from poselift.datasets.joints import get_joint_set
from poselift.evaluation import Report, SequenceRecord, evaluate_sequences, videopose3d_protocol

from ..checkpoint import CheckpointError, load_checkpoint
from .data import LiftData, root_relative
from .model import TemporalModel
from .train import evaluate_lifter

__all__ = ["lifter_records", "write_lifter_report", "load_lifter", "evaluate_checkpoint",
           "save_predictions_npz"]


def lifter_records(preds: dict[str, np.ndarray], data: LiftData) -> list[SequenceRecord]:
    """Pair predictions with root-relative ground truth (metres) for the report."""
    names = list(get_joint_set(data.joints_out).names)
    recs = []
    for sid in data.ids:
        info = data.gt.info(sid)
        recs.append(SequenceRecord(seq_id=sid, subject=info.subject, action=info.action,
                                   camera=info.camera or None, fps=info.attrs.get("fps"),
                                   pred=preds[sid], gt=root_relative(data.sequence_targets(sid)),
                                   joint_names=names))
    return recs


def save_predictions_npz(path: Path, records: list[SequenceRecord]) -> None:
    np.savez(path, pred=np.concatenate([r.pred for r in records]),
             gt=np.concatenate([r.gt for r in records]),
             lengths=np.array([len(r.pred) for r in records]),
             seq_ids=np.array([r.seq_id for r in records]), subjects=np.array([r.subject for r in records]),
             actions=np.array([r.action for r in records]),
             cameras=np.array([r.camera or "" for r in records]),
             joint_names=np.array(records[0].joint_names or []))


def write_lifter_report(preds: dict[str, np.ndarray], data: LiftData, out_dir: str | Path, *,
                        by_subject: bool = False, plots: bool = True,
                        extra: dict[str, Any] | None = None) -> tuple[Report, dict[str, str]]:
    """Write report.json/.md, protocol.md, plots and predictions.npz; returns the report and paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = lifter_records(preds, data)
    report = evaluate_sequences(records)
    paths = {"json": str(out / "report.json"), "markdown": str(out / "report.md"),
             "protocol": str(out / "protocol.md"), "predictions": str(out / "predictions.npz")}
    report.write_json(paths["json"])
    report.write_markdown(paths["markdown"])
    table = videopose3d_protocol(report, by_subject=by_subject)
    Path(paths["protocol"]).write_text(table.to_markdown())
    paths["protocol_json"] = str(out / "protocol.json")
    Path(paths["protocol_json"]).write_text(json.dumps(table.to_dict(), indent=2))
    save_predictions_npz(Path(paths["predictions"]), records)
    if plots:
        from poselift.evaluation.plots import write_plots

        paths.update({f"plot_{k}": str(v) for k, v in write_plots(report, out / "plots").items()})
    if extra:
        doc = json.loads(Path(paths["json"]).read_text())
        doc["extra"] = extra
        Path(paths["json"]).write_text(json.dumps(doc, indent=2))
    return report, paths


def load_lifter(path: str | Path, device: str | torch.device = "cpu") -> tuple[TemporalModel, dict[str, Any]]:
    """Rebuild the evaluation model of a poselift lifter checkpoint (eval mode)."""
    ckpt = load_checkpoint(path, map_location=device)
    if ckpt["model_name"] != "videopose3d":
        raise CheckpointError(f"{path}: holds a {ckpt['model_name']!r} model, not a temporal-convolution lifter")
    model = TemporalModel(**ckpt["model_args"])
    model.load_state_dict(ckpt["state_dict"])  # the strided twin shares these keys
    return model.to(device).eval(), ckpt


def evaluate_checkpoint(checkpoint: str | Path, gt_cache: str, keypoints_cache: str, subjects: list[str] | None,
                        out_dir: str | Path, *, actions: list[str] | None = None, flip: bool | None = None,
                        by_subject: bool | None = None, device: str = "auto", check_fingerprints: bool = False,
                        progress: bool = True) -> tuple[Report, dict[str, str]]:
    """Run a checkpoint over the test sequences of two caches and write the report.

    ``subjects`` / ``actions`` / ``flip`` / ``by_subject`` left at None (subjects: or
    empty) take the checkpoint's training config (``test_subjects``, ``actions``,
    ``flip_test``, ``by_subject``), so a HumanEva recipe is evaluated
    on Walk/Jog/Box and reported per subject without repeating it. Caches of another
    dataset or joint layout than the checkpoint was trained on are refused.
    """
    dev = resolve_device(device)
    model, ckpt = load_lifter(checkpoint, dev)
    cfg = ckpt.get("config") or {}
    extra = ckpt.get("extra") or {}
    subjects = list(subjects or cfg.get("test_subjects") or [])
    actions = list(cfg.get("actions") or []) if actions is None else actions
    flip = bool(cfg.get("flip_test", True)) if flip is None else flip
    by_subject = bool(cfg.get("by_subject", False)) if by_subject is None else by_subject
    data = LiftData.open(gt_cache, keypoints_cache, subjects, actions or None,
                         dataset=extra.get("dataset"), joints_in=extra.get("joints_in"),
                         joints_out=extra.get("joints_out"))
    if check_fingerprints:
        want = ckpt["cache_fingerprints"]
        have = {"gt_cache": data.gt.content_fingerprint, "keypoints_cache": data.kp.content_fingerprint}
        if want != have:
            raise CheckpointError(f"{checkpoint}: trained on caches {want}, evaluated on {have}")
    causal = bool(ckpt["model_args"].get("causal", False))
    preds = evaluate_lifter(model, data, dev, flip=flip, causal=causal, progress=progress)
    return write_lifter_report(preds, data, out_dir, by_subject=by_subject,
                               extra={"checkpoint": str(checkpoint), "flip_test": flip,
                                      "actions": actions, "by_subject": by_subject})
