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
from poselift.core.precision import resolve_precision
from poselift.datasets.joints import get_joint_set
from poselift.evaluation import Report, SequenceRecord, evaluate_sequences, videopose3d_protocol

from poselift.zoo import resolve_weights

from ..checkpoint import CheckpointError, load_checkpoint
from .data import LiftData, root_relative
from .model import TemporalModel
from .interop import load_videopose3d
from .train import evaluate_lifter

__all__ = ["lifter_records", "write_lifter_report", "load_lifter", "load_any_lifter",
           "evaluate_checkpoint", "save_predictions_npz"]


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


def load_any_lifter(path: str | Path, device: str | torch.device = "cpu", *, causal: bool | None = None,
                    dense: bool | None = None, filter_widths: list[int] | None = None,
                    trust_pickle: bool = False) -> tuple[TemporalModel, dict[str, Any]]:
    """A poselift lifter checkpoint, or a released VideoPose3D ``.bin`` (path or zoo name).

    For a ``.bin`` the architecture (widths, channels, joint counts) comes from the weights
    (``load_videopose3d``); what the weights cannot say comes from the arguments: ``causal``
    and ``dense`` (default False) and ``filter_widths`` (for ambiguous layouts). The returned
    dict then has poselift's shape with an empty config: ``kind`` 'videopose3d', ``model_args``,
    ``extra`` {} and ``trajectory`` (whether the file has ``model_traj``). For a poselift
    checkpoint these arguments may only repeat what the file records.
    """
    src = resolve_weights(path)
    try:
        ckpt = load_checkpoint(src, map_location="cpu")
    except CheckpointError as own_error:
        if not Path(src).is_file():
            raise
        try:
            model, traj = load_videopose3d(src, causal=bool(causal), dense=bool(dense),
                                           filter_widths=filter_widths, trust_pickle=trust_pickle)
        except CheckpointError as e:
            raise CheckpointError(f"{e} (read as a VideoPose3D .bin; as a poselift checkpoint: "
                                  f"{own_error})") from None
        return model.to(device).eval(), {"kind": "videopose3d", "model_args": model.constructor_args(),
                                         "config": {}, "extra": {}, "trajectory": traj is not None,
                                         "path": str(src)}
    args = ckpt.get("model_args") or {}
    for name, given in (("causal", causal), ("dense", dense), ("filter_widths", filter_widths)):
        have = args.get(name, False if name != "filter_widths" else None)
        if given is not None and (list(given) if name == "filter_widths" else given) != have:
            raise CheckpointError(f"{src}: the checkpoint records {name}={have}; --{name.replace('_', '-')} "
                                  f"cannot change it (only for VideoPose3D .bin files)")
    model, ckpt = load_lifter(src, device)
    return model, {**ckpt, "kind": "poselift", "path": str(src)}


def evaluate_checkpoint(checkpoint: str | Path, gt_cache: str, keypoints_cache: str, subjects: list[str] | None,
                        out_dir: str | Path, *, actions: list[str] | None = None, flip: bool | None = None,
                        by_subject: bool | None = None, device: str = "auto", check_fingerprints: bool = False,
                        progress: bool = True, dataset: str | None = None, joints_in: str | None = None,
                        joints_out: str | None = None, causal: bool | None = None, dense: bool | None = None,
                        filter_widths: list[int] | None = None, trust_pickle: bool = False,
                        precision: str = "fp32") -> tuple[Report, dict[str, str]]:
    """Run a checkpoint over the test sequences of two caches and write the report.

    ``subjects`` / ``actions`` / ``flip`` / ``by_subject`` left at None (subjects: or
    empty) take the checkpoint's training config (``test_subjects``, ``actions``,
    ``flip_test``, ``by_subject``), so a HumanEva recipe is evaluated
    on Walk/Jog/Box and reported per subject without repeating it. Caches of another
    dataset or joint layout than the checkpoint was trained on are refused.

    A released VideoPose3D ``.bin`` records none of this: ``subjects`` are then required,
    actions default to all, flip to on, by_subject to off, and ``dataset`` / ``joints_in`` /
    ``joints_out`` (None: accept the caches') are checked against the caches as a config's
    are; ``causal`` / ``dense`` / ``filter_widths`` go to :func:`load_any_lifter`. The
    model's joint counts must equal the caches' joint sets.

    ``precision`` (default fp32, the reference's numerics) is the forward precision; the
    resolved precision is written into the report.
    """
    dev = resolve_device(device)
    model, ckpt = load_any_lifter(checkpoint, dev, causal=causal, dense=dense,
                                  filter_widths=filter_widths, trust_pickle=trust_pickle)
    cfg = ckpt.get("config") or {}
    extra = ckpt.get("extra") or {}
    for name, given in (("dataset", dataset), ("joints_in", joints_in), ("joints_out", joints_out)):
        if given and extra.get(name) and given != extra[name]:
            raise CheckpointError(f"{checkpoint}: trained on {name} {extra[name]!r}, asked for {given!r}")
    subjects = list(subjects or cfg.get("test_subjects") or [])
    if not subjects:
        raise CheckpointError(f"{checkpoint}: records no test subjects (a VideoPose3D .bin); "
                              f"pass --subjects")
    actions = list(cfg.get("actions") or []) if actions is None else actions
    flip = bool(cfg.get("flip_test", True)) if flip is None else flip
    by_subject = bool(cfg.get("by_subject", False)) if by_subject is None else by_subject
    data = LiftData.open(gt_cache, keypoints_cache, subjects, actions or None,
                         dataset=dataset or extra.get("dataset"),
                         joints_in=joints_in or extra.get("joints_in"),
                         joints_out=joints_out or extra.get("joints_out"))
    for side, n_model in (("in", model.num_joints_in), ("out", model.num_joints_out)):
        name = data.joints_in if side == "in" else data.joints_out
        cache = data.kp.path if side == "in" else data.gt.path
        if name and get_joint_set(name).num_joints != n_model:
            raise CheckpointError(f"{checkpoint}: the model {'takes' if side == 'in' else 'predicts'} "
                                  f"{n_model} joints, {cache} holds joint set {name!r} with "
                                  f"{get_joint_set(name).num_joints}")
    if check_fingerprints:
        want = ckpt.get("cache_fingerprints")
        if want is None:
            raise CheckpointError(f"{checkpoint}: a VideoPose3D .bin records no cache fingerprints "
                                  f"to check")
        have = {"gt_cache": data.gt.content_fingerprint, "keypoints_cache": data.kp.content_fingerprint}
        if want != have:
            raise CheckpointError(f"{checkpoint}: trained on caches {want}, evaluated on {have}")
    causal = bool(ckpt["model_args"].get("causal", False))
    prec = resolve_precision(precision, dev)
    preds = evaluate_lifter(model, data, dev, flip=flip, causal=causal, progress=progress, precision=precision)
    return write_lifter_report(preds, data, out_dir, by_subject=by_subject,
                               extra={"checkpoint": str(checkpoint), "checkpoint_kind": ckpt["kind"],
                                      "causal": causal, "receptive_field": model.receptive_field(),
                                      "trajectory_model": bool(ckpt.get("trajectory")
                                                               or extra.get("traj_state_dict")),
                                      "flip_test": flip, "actions": actions, "by_subject": by_subject,
                                      "precision": prec.record()})
