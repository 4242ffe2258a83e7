"""TCMR/VIBE evaluation protocols on caches, reports and mesh export.

Protocols (TCMR ``evaluate.py``):
* ``3dpw``: prediction = H36M regressor . vertices -> 14 LSP joints; GT = the stored 14 joints
  (or SPIN-49 joints 25..38); both centred on the mean of joints 2/3 (hips); frames with
  ``valid`` only; PVE against neutral-SMPL GT meshes from GT theta (no alignment).
* ``h36m``: as 3dpw (GT SPIN-49 -> 14), ``valid`` if the cache has it.
* ``mpii3d``: no regressor; 49 SPIN joints -> 17 ``mpii3d_test`` joints for both; centred on
  the pelvis (index 14); ``valid`` (the DB's ``valid_i``) frames only.
Every metric is computed per sequence (acceleration error per video, first and last frame
excluded, triplets with an invalid frame dropped), then pooled over frames.
``match_vibe=True`` evaluates VIBE's frame set instead: the non-overlapping 16-frame chunks of
each video (remainders and videos < 16 frames dropped), ``valid`` not applied.
VIBE (released ``.pth.tar``) is evaluated on the same windows: its per-frame output at the
window's middle frame, the target frame of every evaluation window (not VIBE's own evaluation,
which runs 16-frame chunks and keeps every frame of a chunk).
PVE is streamed: per-frame vertex errors are computed batch by batch, meshes are not kept
(except for sequences chosen for export).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from poselift.core.precision import resolve_precision
from poselift.datasets.joints import LSP14
from poselift.evaluation import Report, SequenceRecord, evaluate_sequences, tcmr_summary

from ..checkpoint import CheckpointError, load_checkpoint
from .rotations import axis_angle_to_rotmat
from .smpl_model import build_spin_smpl, load_extra_regressor
from .model import TCMR, VIBE
from .interop import load_tcmr, load_tcmr_state_dict
from poselift.zoo import resolve_weights
from .data import LEFT, TCMRSource, TCMRWindowData, eval_windows, spin49_index

__all__ = ["TCMRProtocol", "PROTOCOLS", "MPII3D_TEST_FROM_SPIN49", "MPII3D_TEST_NAMES",
           "load_tcmr_any", "predict_source", "protocol_records", "evaluate_source",
           "write_tcmr_report", "frame_mask"]

MPII3D_TEST_NAMES = ("head_top", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder",
                     "l_elbow", "l_wrist", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee",
                     "l_ankle", "pelvis", "spine_h36m", "head_h36m")
MPII3D_TEST_FROM_SPIN49 = (38, 37, 33, 32, 31, 34, 35, 36, 27, 26, 25, 28, 29, 30, 39, 41, 43)


@dataclass(frozen=True)
class TCMRProtocol:
    name: str
    h36m_regressor: bool          # predictions through J_regressor_h36m -> 14 joints
    spin49_select: tuple[int, ...]  # SPIN-49 rows forming the evaluated joints
    center: tuple[int, ...]       # joints whose mean is subtracted per frame
    joint_names: tuple[str, ...]


PROTOCOLS: dict[str, TCMRProtocol] = {
    "3dpw": TCMRProtocol("3dpw", True, tuple(range(25, 39)), (2, 3), LSP14.names),
    "h36m": TCMRProtocol("h36m", True, tuple(range(25, 39)), (2, 3), LSP14.names),
    "mpii3d": TCMRProtocol("mpii3d", False, MPII3D_TEST_FROM_SPIN49, (14,), MPII3D_TEST_NAMES),
}


def load_tcmr_any(path: str | Path, body_model_dir: str | Path, *,
                  device: str | torch.device = "cpu", trust_pickle: bool = False
                  ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A poselift TCMR checkpoint (``train_tcmr``) or a released TCMR/VIBE ``.pth.tar``.

    Returns (model in eval mode on ``device``, info dict with 'kind' and 'model')."""
    path = resolve_weights(path)  # zoo names ("tcmr-demo") are fetched once into the cache
    try:
        ck = load_checkpoint(path, map_location="cpu")
    except CheckpointError:
        model = load_tcmr(path, body_model_dir, trust_pickle=trust_pickle)
        return model.to(device).eval(), {"kind": "reference", "model": type(model).__name__.lower()}
    if ck["model_name"] != "tcmr":
        raise CheckpointError(f"{path}: holds a {ck['model_name']!r} model, not TCMR")
    model = TCMR(build_spin_smpl(body_model_dir), **ck["model_args"])
    load_tcmr_state_dict(model, ck["state_dict"], path)
    return model.to(device).eval(), {"kind": "poselift", "model": "tcmr", "epoch": ck["epoch"]}


def h36m_regressor(body_model_dir: str | Path, n_verts: int) -> torch.Tensor:
    return torch.from_numpy(load_extra_regressor(body_model_dir, "J_regressor_h36m.npy", 17,
                                                 n_verts))


@torch.no_grad()
def predict_source(model: torch.nn.Module, src: TCMRSource, protocol: TCMRProtocol, *,
                   J_regressor: torch.Tensor | None, device: torch.device | str = "cpu",
                   batch_size: int = 32, pad: str = "repeat_target", pve: bool = True,
                   export: dict[str, set[int]] | None = None,
                   ids: list[str] | None = None, precision: str = "fp32") -> dict[str, dict[str, np.ndarray]]:
    """Run the model on every frame of the source's sequences.

    Returns {seq_id: {'joints': (T, J, 3) protocol joints (not centred), 'pve': (T,) metres
    (if ``pve`` and the cache has GT SMPL), 'verts' (K, V, 3) and 'verts_frames' (K,) for the
    frames ``export[seq]`` asks for (only those meshes are kept)}}. ``precision`` (fp32 |
    bf16 | fp16 | auto) autocasts the GRUs and regressor; SMPL and the metrics stay float32.
    """
    if protocol.h36m_regressor and J_regressor is None:
        raise ValueError(f"protocol {protocol.name!r} needs the H36M joint regressor")
    model.eval()
    win = eval_windows(src, pad)
    wanted = set(ids) if ids is not None else None
    rows = np.arange(len(win)) if wanted is None else np.nonzero(
        [src.ids[s] in wanted for s in win.seq])[0]
    data = TCMRWindowData(src, win, labels=False)
    lab = src.labels
    with_pve = pve and lab.header.kind == "gt" and bool(lab.header.extra.get("smpl"))
    smpl = model.regressor.smpl
    reg = J_regressor.to(device) if (J_regressor is not None and protocol.h36m_regressor) else None
    chunks: dict[str, list] = {}
    prec = resolve_precision(precision, device)
    for b0 in range(0, len(rows), batch_size):
        idx = rows[b0:b0 + batch_size]
        batch = data.get_batch(idx)
        with prec.autocast():
            if isinstance(model, VIBE):  # per-frame outputs: keep the window's target (middle) frame
                out = model(batch["features"].to(device), J_regressor=reg)
                out = {k: v[:, LEFT] for k, v in out.items()}
            else:
                out = model(batch["features"].to(device), is_train=False, J_regressor=reg)
        joints = out["kp_3d"].float()
        if not protocol.h36m_regressor:
            joints = joints[:, list(protocol.spin49_select)]
        seq, frame = batch["seq"].numpy(), batch["frame"].numpy()
        err = None
        if with_pve:
            pose = np.stack([lab.read(src.ids[s], "smpl_pose", f, f + 1)[0] for s, f in zip(seq, frame)])
            shape = np.stack([lab.read(src.ids[s], "smpl_shape", f, f + 1)[0] for s, f in zip(seq, frame)])
            rot = axis_angle_to_rotmat(torch.from_numpy(pose).float().reshape(-1, 3)).reshape(-1, 24, 3, 3)
            gt_verts = smpl(torch.from_numpy(shape).float().to(device), rot.to(device)).vertices
            err = (out["verts"].float() - gt_verts).norm(dim=-1).mean(dim=1).cpu().numpy()
        for i, (s, f) in enumerate(zip(seq, frame)):
            sid = src.ids[s]
            keep = export is not None and int(f) in export.get(sid, ())
            chunks.setdefault(sid, []).append((int(f), joints[i].cpu().numpy(),
                                               None if err is None else float(err[i]),
                                               out["verts"][i].float().cpu().numpy() if keep else None))
    result: dict[str, dict[str, np.ndarray]] = {}
    for sid, items in chunks.items():
        frames = np.array([it[0] for it in items])
        n = src.labels.info(sid).n_frames
        if not np.array_equal(np.sort(frames), np.arange(n)):
            raise RuntimeError(f"sequence {sid!r}: windows do not cover every frame exactly once")
        order = np.argsort(frames)
        entry = {"joints": np.stack([items[k][1] for k in order])}
        if with_pve:
            entry["pve"] = np.array([items[k][2] for k in order])
        kept = [k for k in order if items[k][3] is not None]
        if kept:
            entry["verts"] = np.stack([items[k][3] for k in kept])
            entry["verts_frames"] = frames[kept]
        result[sid] = entry
    return result


def _gt_joints(src: TCMRSource, sid: str, protocol: TCMRProtocol) -> np.ndarray:
    j3 = src.labels.read(sid, "joints_3d").astype(np.float64)
    idx = spin49_index(src.layouts["joints_3d"])
    full = np.zeros((j3.shape[0], 49, 3))
    full[:, idx] = j3
    have = set(idx.tolist())
    missing = [j for j in protocol.spin49_select if j not in have]
    if missing:
        raise ValueError(f"{src.labels.path}: GT layout {src.layouts['joints_3d']!r} lacks the "
                         f"joints protocol {protocol.name!r} evaluates")
    return full[:, list(protocol.spin49_select)]


def frame_mask(n: int, valid: np.ndarray | None, match_vibe: bool) -> np.ndarray:
    """Evaluated frames: ``valid`` (all if None), or VIBE's full 16-frame chunks."""
    if match_vibe:
        m = np.zeros(n, bool)
        m[: (n // 16) * 16] = True
        return m
    return np.ones(n, bool) if valid is None else np.asarray(valid, bool).reshape(n)


def protocol_records(preds: dict[str, dict[str, np.ndarray]], src: TCMRSource,
                     protocol: TCMRProtocol, *, match_vibe: bool = False
                     ) -> tuple[list[SequenceRecord], dict[str, np.ndarray]]:
    """SequenceRecords (centred joints, metres, masks) and per-sequence PVE arrays."""
    recs, pves = [], {}
    for sid in src.ids:
        if sid not in preds:
            continue
        info = src.labels.info(sid)
        valid = src.labels.read(sid, "valid") if "valid" in info.fields else None
        mask = frame_mask(info.n_frames, valid, match_vibe)
        if not mask.any():
            continue
        pred = preds[sid]["joints"].astype(np.float64)
        gt = _gt_joints(src, sid, protocol)
        pred = pred - pred[:, list(protocol.center)].mean(axis=1, keepdims=True)
        gt = gt - gt[:, list(protocol.center)].mean(axis=1, keepdims=True)
        recs.append(SequenceRecord(seq_id=sid, subject=info.subject, action=info.action,
                                   fps=info.attrs.get("fps"), pred=pred, gt=gt, mask=mask,
                                   joint_names=protocol.joint_names))
        if "pve" in preds[sid]:
            pves[sid] = np.where(mask, preds[sid]["pve"], np.nan)
    if not recs:
        raise ValueError(f"{src.labels.path}: no evaluable frames (all masked)")
    return recs, pves


def evaluate_source(model: torch.nn.Module, src: TCMRSource, protocol: str, *,
                    J_regressor: torch.Tensor | None, device: torch.device | str = "cpu",
                    batch_size: int = 32, pad: str = "repeat_target", match_vibe: bool = False,
                    export: dict[str, set[int]] | None = None, precision: str = "fp32"
                    ) -> tuple[Report, dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Predict, build records, evaluate per sequence; PVE added to the report's frames.
    Returns (report, protocol info, raw predictions incl. exported meshes)."""
    if protocol not in PROTOCOLS:
        raise KeyError(f"unknown TCMR protocol {protocol!r}; known: {sorted(PROTOCOLS)}")
    proto = PROTOCOLS[protocol]
    preds = predict_source(model, src, proto, J_regressor=J_regressor, device=device,
                           batch_size=batch_size, pad=pad, export=export, precision=precision)
    recs, pves = protocol_records(preds, src, proto, match_vibe=match_vibe)
    report = evaluate_sequences(recs)
    for r in report.results:
        if r.seq_id in pves:
            r.frames["pve"] = pves[r.seq_id] * report.scale
    info = {"protocol": asdict(proto), "dataset": src.labels.header.dataset,
            "frame_set": ("VIBE non-overlapping 16-frame chunks (valid not applied)" if match_vibe
                          else "all frames with valid=True"),
            "window_padding": pad, "pve": "neutral SMPL from GT theta, no alignment" if pves else None,
            "features_cache": str(src.features.path), "labels_cache": str(src.labels.path),
            "cache_fingerprints": {"features": src.features.content_fingerprint,
                                   "labels": src.labels.content_fingerprint},
            "summary_mm": tcmr_summary(report),
            "precision": resolve_precision(precision, device).record()}
    return report, info, preds


def write_tcmr_report(report: Report, info: dict[str, Any], out_dir: str | Path, *,
                      plots: bool = True) -> dict[str, str]:
    """report.json (with 'protocol' info), report.md (summary first), summary.json, plots,
    predictions.npz (readable by ``poselift-evaluate predictions``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out / "report.json"), "markdown": str(out / "report.md"),
             "summary": str(out / "summary.json")}
    doc = report.to_dict()
    doc["protocol"] = info
    Path(paths["json"]).write_text(json.dumps(doc, indent=2, default=str))
    s = info["summary_mm"]
    fc = report.frame_counts()
    head = ["# TCMR evaluation", "", f"Dataset {info['dataset']}, protocol "
            f"{info['protocol']['name']}; frames: {info['frame_set']} ({fc['evaluated']} of "
            f"{fc['total']} evaluated).", "",
            "| PA-MPJPE | MPJPE | PVE | Accel error | Accel (pred) |", "|---:|---:|---:|---:|---:|",
            "| " + " | ".join("-" if s[k] is None else f"{s[k]:.1f}" for k in
                             ("pa_mpjpe", "mpjpe", "pve", "accel_error", "accel")) + " |", ""]
    Path(paths["markdown"]).write_text("\n".join(head) + "\n" + report.to_markdown())
    Path(paths["summary"]).write_text(json.dumps(dict(s, frames=fc), indent=2))
    if plots:
        from poselift.evaluation.plots import write_plots

        paths.update({f"plot_{k}": str(v) for k, v in write_plots(report, out / "plots").items()})
    return paths
