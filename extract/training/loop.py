"""Training loop for the 2D estimators (``poselift-extract train CONFIG``).

One YAML config (``configs/pose2d/``) names the recipe, the datasets, the augmentation and the
schedule. The loop: Adam + MultiStep schedule, AMP (float16 + GradScaler) on CUDA, DDP under
torchrun (``lifting.distributed``: ``batch_size`` is the global batch, split over the ranks by
``DistributedSampler``), validation every ``val_every`` epochs with model selection by AP (COCO /
Halpe: COCO AP with GT boxes; PoseTrack: mAP / 100), and exact resume from ``last.pt``.

Outputs in ``out``: ``last.pt`` (resume state), ``history.json``, and the best model in the layout
the loaders read: ``model_best.pth`` = a plain FastPose state dict for ``sikr``
(``load_alphapose``), ``{"state_dict": ...}`` for ``famipose`` (``load_famipose``), the
HRNet + SimCC state dict for ``simcc``; a spatial model's weights go to ``spatial_best.pth``.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from torch.utils.data import ConcatDataset, DataLoader, DistributedSampler

from poselift.core.checkpoints import load_checkpoint
from poselift.core.device import resolve_device
from poselift.datasets.joints import get_joint_set
from poselift.lifting.distributed import (all_reduce_sums, barrier, broadcast_object, gather_rng_states,
                                          init_distributed, restore_rng_state, wrap_ddp)

from ..crops import invert_affine
from ..estimators.contracts import famipose_contract, fastpose_contract
from ..estimators.spatial_model import SpatialRefined
from .augment import AugmentConfig
from .datasets import CocoKeypoints, KeypointSet, PoseTrackKeypoints
from .distill import Teacher, distill_fill
from .pgpg import PGPG, match_detections
from .recipes import batch_loss, build_model, decode_crop, to_device, trainable_parameters

__all__ = ["load_config", "train", "validate", "predict_results"]

log = logging.getLogger(__name__)


def load_config(path: str | Path) -> dict:
    """Read a YAML config; relative paths inside it are taken relative to the file."""
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read config ({e})") from None
    if not isinstance(cfg, dict) or "model" not in cfg or "data" not in cfg:
        raise ValueError(f"{path}: a training config needs 'model' and 'data' sections")
    cfg["_base"] = str(path.parent.resolve())
    return cfg


def _path(cfg: dict, p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else Path(cfg.get("_base", ".")) / q


def _contract(cfg: dict):
    m = cfg["model"]
    size = tuple(m.get("input_size", (256, 192) if m["type"] != "famipose" else (384, 288)))
    js = m.get("joint_set", "posetrack17" if m["type"] == "famipose" else "coco17")
    if m["type"] == "sikr":  # AlphaPose: mean subtraction only
        return fastpose_contract(input_size=size, joint_set=js)
    # HRNet-based recipes normalise with the ImageNet statistics (FAMI-Pose's contract does)
    return famipose_contract(input_size=size, joint_set=js,
                             supporting_frames=(-2, -1, 1, 2) if m["type"] == "famipose" else ())


def _dataset(cfg: dict, spec: dict, contract, train: bool, seed: int) -> KeypointSet:
    kind = spec.get("type", "coco")
    aug = AugmentConfig(**{**(cfg.get("augment") or {}), "enabled": train})
    common = dict(train=train, augment=aug, seed=seed)
    ann, root = _path(cfg, spec["ann"]), _path(cfg, spec.get("images", "."))
    if kind == "posetrack":
        return PoseTrackKeypoints(ann, root, contract, **common)
    if kind not in ("coco", "halpe"):
        raise ValueError(f"data entry type must be coco, halpe or posetrack, got {kind!r}")
    return CocoKeypoints(ann, root, contract, spec.get("joint_set"), model_joint_set=contract.joint_set, **common)


def _fit_pgpg(cfg: dict, sets: list[KeypointSet], seed: int) -> PGPG | None:
    pc = (cfg.get("data") or {}).get("pgpg") or {}
    if not pc.get("enabled", False):
        return None
    kps = np.concatenate([np.stack([s._model_kps(x["kps"])[0] for x in s.samples]) for s in sets])
    boxes = np.concatenate([np.stack([x["box"] for x in s.samples]) for s in sets])
    det = None
    if pc.get("detections"):  # detector boxes on the training images (COCO detection results)
        if len(sets) != 1:
            raise ValueError("data.pgpg.detections needs exactly one training set (image ids differ per set)")
        dets = json.loads(_path(cfg, pc["detections"]).read_text())
        det = match_detections(boxes, [x["image_id"] for x in sets[0].samples], dets,
                               float(pc.get("min_iou", 0.5)), float(pc.get("min_score", 0.0)))
    return PGPG.fit(kps, boxes, det, int(pc.get("num_classes", 8)), seed, float(pc.get("subpatch_p", 0.15)))


def predict_results(kind: str, model: torch.nn.Module, ds: KeypointSet, cfg: dict, device: torch.device,
                    batch_size: int = 32, num_joints: int | None = None) -> list[dict]:
    """AlphaPose-format results (image pixels) for every sample of ``ds`` (no augmentation)."""
    model.eval()
    out = []
    for batch in DataLoader(ds, batch_size=batch_size, shuffle=False):
        xy, sc = decode_crop(kind, model, to_device(batch, device), cfg["model"], ds.contract.crop_hw)
        for i, idx in enumerate(batch["index"].tolist()):
            m = invert_affine(batch["affine"][i].numpy())
            img = xy[i] @ m[:, :2].T + m[:, 2]
            k = num_joints or len(img)
            kp = np.concatenate([img[:k], sc[i, :k, None]], axis=1)
            out.append({"image_id": ds.samples[idx]["image_id"], "category_id": 1,
                        "keypoints": kp.reshape(-1).tolist(), "score": float(sc[i, :k].mean())})
    return out


def validate(kind: str, model: torch.nn.Module, ds: KeypointSet, ann: Path, cfg: dict, device: torch.device) -> float:
    """COCO AP (COCO / Halpe val) or PoseTrack mAP / 100 with GT boxes."""
    from poselift.evaluation.keypoints2d import evaluate_keypoints
    from poselift.evaluation.posetrack import posetrack_map

    res = predict_results(kind, model, ds, cfg, device, num_joints=ds.num_src)
    if isinstance(ds, PoseTrackKeypoints):
        return posetrack_map(ann, res)["total"] / 100.0
    gt = json.loads(Path(ann).read_text())
    for a in gt["annotations"]:  # e.g. Halpe-136 GT for a Halpe-26 model: score its points
        a["keypoints"] = a["keypoints"][:3 * ds.num_src]
        a["num_keypoints"] = int(sum(v > 0 for v in a["keypoints"][2::3]))
    return evaluate_keypoints(gt, res).stats["AP"]


def _save_atomic(obj: Any, path: Path) -> None:
    """tmp + rename: a kill mid-save never leaves a half-written file the loaders would refuse."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _save_best(kind: str, model: torch.nn.Module, out: Path, epoch: int) -> None:
    m = model.module if hasattr(model, "module") else model
    if isinstance(m, SpatialRefined):
        _save_atomic(m.spatial.state_dict(), out / "spatial_best.pth")
        m = m.base
    sd = m.state_dict()
    _save_atomic({"begin_epoch": epoch + 1, "state_dict": sd} if kind == "famipose" else sd, out / "model_best.pth")


def train(cfg: dict, out: str | Path, *, log_fn: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Run (or resume) the training described by ``cfg``; returns the history dict."""
    out = Path(out)
    tc = cfg.get("train") or {}
    kind, seed = cfg["model"]["type"], int(tc.get("seed", 0))
    want = tc.get("device", "auto")
    device = resolve_device(want)
    ctx = init_distributed(device)
    device = ctx.device
    torch.manual_seed(seed)
    contract = _contract(cfg)
    k = get_joint_set(contract.joint_set).num_joints
    sets = [_dataset(cfg, s, contract, True, seed) for s in cfg["data"]["train"]]
    pgpg = _fit_pgpg(cfg, sets, seed)
    pgpg_start = int(((cfg["data"].get("pgpg") or {}).get("start_epoch", 0)))
    for s in sets:
        log_fn(f"train set {s.root}: {len(s)} samples, skipped {s.skipped}")
    train_ds = ConcatDataset(sets)
    val_spec = cfg["data"].get("val")
    val_ds = _dataset(cfg, val_spec, contract, False, seed) if val_spec else None
    model = build_model(cfg["model"], k, contract.crop_hw).to(device)
    params = trainable_parameters(model)
    opt = torch.optim.Adam(params, lr=float(tc.get("lr", 1e-3)))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(tc.get("milestones", [])), float(tc.get("gamma", 0.1)))
    amp = bool(tc.get("amp", True)) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    teacher = None
    dc = cfg.get("distill") or {}
    if dc.get("teacher"):
        if kind != "sikr":  # the teacher is a FastPose and reads the student's (AlphaPose) crops
            raise ValueError(f"distill.teacher needs model.type 'sikr', got {kind!r}")
        from ..estimators.fastpose import load_alphapose

        teacher = Teacher("sikr", load_alphapose(_path(cfg, dc["teacher"])).to(device), cfg["model"], contract.crop_hw)
    start, best, history = 0, -1.0, {"loss": [], "val": []}
    last = out / "last.pt"
    if last.is_file() and tc.get("resume", True):
        st = load_checkpoint(last, trust=True, map_location=device)  # our own file, written below
        if st.get("config", {}).get("model") != cfg["model"]:
            raise ValueError(f"{last}: written by a run with a different 'model' section; "
                             f"use another output folder or remove the file to start afresh")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        scaler.load_state_dict(st["scaler"])
        start, best, history = st["epoch"] + 1, st["best"], st["history"]
        restore_rng_state(st.get("rng"), torch.get_rng_state(), ctx, str(last))
        log_fn(f"resumed {last} at epoch {start}")
    model = wrap_ddp(model, ctx)
    epochs, bs = int(tc.get("epochs", 1)), int(tc.get("batch_size", 32))
    sampler = DistributedSampler(train_ds, ctx.world_size, ctx.rank, shuffle=True, seed=seed, drop_last=True)
    for epoch in range(start, epochs):
        sampler.set_epoch(epoch)
        for s in sets:
            s.set_epoch(epoch)
            s.pgpg = pgpg if epoch >= pgpg_start else None  # AlphaPose switches DPG on late
        loader = DataLoader(train_ds, batch_size=max(1, bs // ctx.world_size), sampler=sampler, drop_last=True,
                            num_workers=int(cfg["data"].get("workers", 0)), pin_memory=device.type == "cuda")
        model.train()
        sums, t0 = {"loss": 0.0, "n": 0.0}, time.time()
        max_steps = tc.get("max_steps_per_epoch")
        for step, batch in enumerate(loader):
            if max_steps is not None and step >= int(max_steps):
                break
            batch = to_device(batch, device)
            batch["weight"] = batch["visible"] * batch["label_mask"]
            if teacher is not None:
                tj, tcf = teacher(batch)
                batch["joints"], batch["weight"] = distill_fill(
                    batch["joints"], batch["visible"], batch["label_mask"], tj, tcf,
                    float(dc.get("threshold", 0.3)), float(dc.get("weight", 1.0)))
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                loss, _ = batch_loss(kind, model, batch, cfg["model"], contract.crop_hw)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sums["loss"] += float(loss.detach())
            sums["n"] += 1
        sched.step()
        sums = all_reduce_sums(sums, ctx)
        history["loss"].append(sums["loss"] / max(sums["n"], 1))
        log_fn(f"epoch {epoch}: loss {history['loss'][-1]:.5f} ({time.time() - t0:.1f} s)")
        every = int(tc.get("val_every", 1))
        metric = None
        if val_ds is not None and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
            if ctx.is_main:  # the bare module: a DDP forward would start collectives on rank 0 only
                metric = validate(kind, model.module if hasattr(model, "module") else model, val_ds, _path(cfg, val_spec["ann"]), cfg, device)
            metric = broadcast_object(metric, ctx)
            history["val"].append({"epoch": epoch, "AP": metric})
            log_fn(f"epoch {epoch}: val AP {metric:.4f} (best {max(best, metric):.4f})")
        rng = gather_rng_states(ctx)
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if metric is not None and metric > best:
                best = metric
                _save_best(kind, model, out, epoch)
            elif val_ds is None:
                _save_best(kind, model, out, epoch)  # no validation: the latest model is the model
            inner = model.module if hasattr(model, "module") else model
            _save_atomic({"model": inner.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                          "scaler": scaler.state_dict(), "epoch": epoch, "best": best, "history": history,
                          "rng": rng, "config": {k_: v for k_, v in cfg.items() if k_ != "_base"}}, last)
            (out / "history.json").write_text(json.dumps(history, indent=2))
        best = broadcast_object(best, ctx)
        barrier(ctx)
    return history
