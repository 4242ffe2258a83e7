"""Training loop for temporal-convolution lifters, readable top to bottom.

Recipe (VideoPose3D's run.py): Adam with amsgrad, lr decayed per epoch, BatchNorm
momentum decayed from 0.1 to 0.001, flip augmentation (every window listed twice),
MPJPE on root-relative targets, optional depth-weighted trajectory loss. Training uses
the strided single-frame model when chunk == 1 (same weights as the evaluation model);
evaluation runs whole sequences through the valid-convolution model.

Semi-supervised training (``unlabeled_subjects``) concatenates an endless unlabeled
stream to every labeled batch and, from epoch ``warmup`` on, adds the 2D reprojection
and bone-length terms (see ``semi_supervised.py``).

Differences from the reference, on purpose: runs are seeded (model init, shuffling,
dropout), resume reproduces an uninterrupted run exactly (also the unlabeled stream),
and batches are gathered with one vectorised index operation instead of a Python loop
per example.

Data-parallel (``torchrun``; see ``distributed.py``): ``batch_size`` stays the global batch,
each rank trains on an equal, contiguous part of every step's slice of the seeded epoch
permutation (the epoch is cut to a multiple of the world size), and with ``sync_bn`` (default)
BatchNorm statistics cover the whole global batch, as in a single process. Rank 0 evaluates
and writes the checkpoints. Semi-supervised training is single-process only.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from poselift.core.compile import maybe_compile
from poselift.core.device import resolve_device
from poselift.core.optim import make_adam
from poselift.core.precision import resolve_precision
from poselift.core.progress import progress_bar
from poselift.datasets.joints import get_joint_set
from poselift.evaluation.metrics import mpjpe

from ..config import LiftConfig, config_to_dict
from ..distributed import (DistContext, SyncTemporalModelOptimized1f, all_reduce_sums, broadcast_object,
                           convert_sync_batchnorm, init_distributed, rank_part, shutdown, wrap_ddp)
from ..run import (check_resume_init, finish_run, guarded_step, init_provenance, resume_checkpoint, rng_extra,
                   save_epoch, seed_everything, start_run)
from .infer import predict_sequence
from .data import LiftData, root_relative
from .losses import mpjpe_loss, weighted_mpjpe_loss
from .semi_supervised import (SemiSupervisedError, UnlabeledStream, open_unlabeled,
                              semi_supervised_terms)
from .model import TemporalModel, TemporalModelOptimized1f, bn_momentum_schedule

__all__ = ["train_lifter", "build_lifters", "evaluate_lifter"]


def build_lifters(cfg: LiftConfig, j_in: int, j_out: int, num_out: int | None = None
                  ) -> tuple[torch.nn.Module, TemporalModel]:
    """(training model, evaluation model) sharing one state_dict layout."""
    kw = dict(num_joints_in=j_in, in_features=2, num_joints_out=num_out or j_out,
              filter_widths=cfg.architecture, causal=cfg.causal, dropout=cfg.dropout,
              channels=cfg.channels)
    evaluator = TemporalModel(dense=cfg.dense, **kw)
    if cfg.chunk == 1 and not cfg.dense:
        trainer: torch.nn.Module = TemporalModelOptimized1f(**kw)
    else:
        trainer = TemporalModel(dense=cfg.dense, **kw)
    trainer.load_state_dict(evaluator.state_dict())
    return trainer, evaluator


def evaluate_lifter(model: TemporalModel, data: LiftData, device: torch.device, *,
                    flip: bool, causal: bool, progress: bool = False,
                    precision: str = "fp32") -> dict[str, np.ndarray]:
    """Predict every test sequence; returns {seq_id: (T, J, 3) root-relative-style prediction}.
    ``precision``: forward precision (fp32 | bf16 | fp16 | auto), outputs float32 either way."""
    model.eval()
    pad = (model.receptive_field() - 1) // 2
    perm_in = get_joint_set(data.joints_in).flip_permutation() if flip else None
    perm_out = get_joint_set(data.joints_out).flip_permutation() if flip else None
    preds = {}
    for sid in progress_bar(data.ids, desc="evaluate", unit="seq", progress=progress, leave=False):
        preds[sid] = predict_sequence(model, data.sequence_inputs(sid), pad=pad,
                                      causal_shift=pad if causal else 0, flip_in=perm_in,
                                      flip_out=perm_out, device=device, precision=precision)
    return preds


def _mean_mpjpe_mm(preds: dict[str, np.ndarray], data: LiftData) -> float:
    """Frame-weighted MPJPE (mm) of pose predictions against root-relative ground truth."""
    errs = [mpjpe(preds[s], root_relative(data.sequence_targets(s))) for s in data.ids]
    return float(np.concatenate(errs).mean() * 1000.0)


def _open_splits(cfg: LiftConfig) -> tuple[LiftData, LiftData | None]:
    """Training and test data; ``subset`` thins the training split only, ``downsample`` both
    (as the reference). The config's dataset / joint-set expectations are checked here."""
    expect = dict(dataset=cfg.dataset, joints_in=cfg.joints_in, joints_out=cfg.joints_out)
    train = LiftData.open(cfg.gt_cache, cfg.keypoints_cache, cfg.train_subjects, cfg.actions,
                          subset=cfg.subset, downsample=cfg.downsample, **expect)
    test = (LiftData.open(cfg.gt_cache, cfg.keypoints_cache, cfg.test_subjects, cfg.actions,
                          downsample=cfg.downsample, **expect)
            if cfg.test_subjects and cfg.eval_every else None)
    return train, test


def _open_unlabeled(cfg: LiftConfig, train: LiftData, pad: int, shift: int,
                    frames_per_batch: int) -> UnlabeledStream | None:
    if not cfg.unlabeled_subjects:
        return None
    if not cfg.trajectory:
        raise SemiSupervisedError("semi-supervised training (unlabeled_subjects "
                                  f"{cfg.unlabeled_subjects}) projects pose + trajectory to 2D: set "
                                  "trajectory: true")
    return open_unlabeled(cfg.unlabeled_cache or cfg.keypoints_cache, cfg.unlabeled_subjects,
                          cfg.actions, downsample=cfg.downsample, left=pad + shift,
                          right=pad - shift, chunk=cfg.chunk, flip=cfg.flip_train,
                          batch_size=frames_per_batch, seed=cfg.seed_unlabeled,
                          dataset=train.gt.header.dataset, joint_set=train.joints_in)


def _train_step(batch: dict[str, torch.Tensor], unl: dict[str, torch.Tensor] | None,
                model: torch.nn.Module, traj_model: torch.nn.Module | None, parents: tuple[int, ...],
                cfg: LiftConfig, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one batch: pose MPJPE (+ trajectory, + unlabeled terms when ``unl``).

    Labeled and unlabeled windows go through each model in ONE forward pass, so BatchNorm
    sees both (reference semantics)."""
    x = batch["kp2d"].to(device, non_blocking=True)
    y = batch["pose3d"].to(device, non_blocking=True)
    valid = batch["target_valid"].to(device, non_blocking=True)
    n_lab = x.shape[0]
    if unl is not None:
        x = torch.cat([x, unl["kp2d"].to(device, non_blocking=True)])
    pred = model(x).float()  # losses in float32 under autocast
    loss_pos = mpjpe_loss(pred[:n_lab][valid], y[valid])
    loss, parts = loss_pos, {"pos": float(loss_pos.detach())}
    if traj_model is not None:
        traj_pred = traj_model(x).float()
        traj = batch["traj"].to(device, non_blocking=True)
        w = 1.0 / traj[..., 2].clamp_min(1e-3)  # far subjects count less
        loss_traj = weighted_mpjpe_loss(traj_pred[:n_lab][valid], traj[valid], w[valid])
        loss = loss + loss_traj
        parts["traj"] = float(loss_traj.detach())
        if unl is not None:
            terms = semi_supervised_terms(
                pred[:n_lab], pred[n_lab:], traj_pred[n_lab:],
                unl["kp2d_target"].to(device, non_blocking=True),
                unl["camera"].to(device, non_blocking=True), parents, valid_lab=valid,
                valid_unl=unl["target_valid"].to(device, non_blocking=True),
                linear=cfg.linear_projection)
            parts["proj_2d"] = float(terms["projection"].detach())
            parts["bone"] = float(terms["bone"].detach())
            if cfg.projection_term:
                loss = loss + terms["projection"]
            if cfg.bone_length_term:
                loss = loss + terms["bone"]
    return loss, parts


def _load_init(path: str, model: torch.nn.Module, traj: torch.nn.Module | None) -> dict[str, Any]:
    """Start weights from a VideoPose3D ``.bin`` (``model_pos`` / ``model_traj``) or a poselift
    lifter checkpoint, loaded strictly into the CONFIGURED models: the config's architecture is
    kept (and recorded), a file that does not fit it is refused naming the file and the key.
    Optimizer, lr and epoch are not taken from the file. Returns the provenance record."""
    from poselift.zoo import resolve_weights

    from ..checkpoint import CheckpointError, load_checkpoint
    from .interop import load_weights_into, read_videopose3d

    src = str(resolve_weights(path))
    try:
        ck = load_checkpoint(src)
    except CheckpointError:
        ck = None
    if ck is not None:
        if ck["model_name"] != "videopose3d":
            raise CheckpointError(f"{src}: holds a {ck['model_name']!r} model, not a temporal-convolution lifter")
        kind, pos, pos_traj, epoch = "poselift", ck["state_dict"], ck["extra"].get("traj_state_dict"), ck["epoch"]
    else:
        src, raw = read_videopose3d(src)
        kind, pos, pos_traj, epoch = "videopose3d", raw["model_pos"], raw.get("model_traj"), raw.get("epoch")
    load_weights_into(model, pos, f"{src} [model_pos]")
    if traj is not None and pos_traj is not None:
        load_weights_into(traj, pos_traj, f"{src} [model_traj]")
    elif traj is not None:
        print(f"init: {src} has no trajectory model; the trajectory model starts from random weights")
    return init_provenance(src, kind, epoch=epoch, trajectory=traj is not None and pos_traj is not None)


def _sync_bn_trainer(model: torch.nn.Module) -> torch.nn.Module:
    """The training model with BatchNorm synchronised over the ranks (same state_dict)."""
    if type(model) is TemporalModelOptimized1f:
        twin = SyncTemporalModelOptimized1f(**model.constructor_args())
        twin.load_state_dict(model.state_dict())
        model = twin
    return convert_sync_batchnorm(model)


def train_lifter(cfg: LiftConfig, resume: bool = True, *, sync_bn: bool = True) -> dict[str, Any]:
    """Train (or resume) a lifter as configured; returns a summary dict (also written as JSON).

    Semi-supervised when ``cfg.unlabeled_subjects`` is set (needs ``trajectory`` and camera
    intrinsics, i.e. Human3.6M): see :mod:`poselift.lifting.videopose3d.semi_supervised`.
    Under ``torchrun`` it trains data-parallel (module docstring); ``sync_bn`` synchronises
    BatchNorm statistics over the ranks (reference semantics; ignored in one process).
    """
    out = Path(cfg.out_dir)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    ctx = init_distributed(resolve_device(cfg.device))
    try:
        return _train(cfg, resume, sync_bn, ctx, out)
    finally:
        shutdown(ctx)


def _train(cfg: LiftConfig, resume: bool, sync_bn: bool, ctx: DistContext, out: Path) -> dict[str, Any]:
    start_run(cfg, out, ctx)
    device = ctx.device
    prec = resolve_precision(cfg.precision, device).apply()
    seed_everything(cfg.seed)

    train, test = _open_splits(cfg)
    js_out = get_joint_set(train.joints_out)
    j_in, j_out = get_joint_set(train.joints_in).num_joints, js_out.num_joints
    model_train, model_eval = build_lifters(cfg, j_in, j_out)
    traj_train = traj_eval = None
    if cfg.trajectory:
        traj_train, traj_eval = build_lifters(cfg, j_in, j_out, num_out=1)
    last = out / "last.pt"
    resuming = resume and last.exists()
    init_info = _load_init(cfg.init, model_train, traj_train) if cfg.init and not resuming else None
    pad = (model_eval.receptive_field() - 1) // 2
    shift = pad if cfg.causal else 0
    frames_per_batch = max(1, cfg.batch_size // cfg.chunk)
    windows = train.windows(left=pad + shift, right=pad - shift, chunk=cfg.chunk)
    ds = train.dataset(windows, flip="double" if cfg.flip_train else None,
                       with_trajectory=cfg.trajectory)
    unlabeled = _open_unlabeled(cfg, train, pad, shift, frames_per_batch)
    if ctx.enabled:
        if unlabeled is not None:
            raise ValueError("semi-supervised training (unlabeled_subjects) runs in one process only")
        if frames_per_batch % ctx.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} (= {frames_per_batch} windows per step) must "
                             f"be divisible by the number of processes {ctx.world_size}")
        if sync_bn:
            model_train = _sync_bn_trainer(model_train)
            traj_train = _sync_bn_trainer(traj_train) if traj_train is not None else None
    params = list(model_train.parameters()) + (list(traj_train.parameters()) if traj_train else [])
    optimizer = make_adam(params, lr=cfg.lr, amsgrad=True)  # fused kernel where torch has one
    scaler = prec.grad_scaler()
    models = [m for m in (model_train, traj_train) if m is not None]
    for m in models:
        m.to(device)
    # DDP averages gradients; with sync_bn every rank's BN buffers are equal already, without it
    # rank 0's running statistics are broadcast (torch's default, as DistributedSampler users get).
    step_train = wrap_ddp(model_train, ctx, broadcast_buffers=not sync_bn)
    step_traj = wrap_ddp(traj_train, ctx, broadcast_buffers=not sync_bn) if traj_train is not None else None
    step_train = maybe_compile(step_train, cfg.compile)

    fingerprints = {"gt_cache": train.gt.content_fingerprint, "keypoints_cache": train.kp.content_fingerprint}
    data_info = {"dataset": train.gt.header.dataset, "joints_in": train.joints_in,
                 "joints_out": train.joints_out}
    start_epoch, lr, history = 0, cfg.lr, []
    if resuming:
        ck = resume_checkpoint(last, fingerprints, ctx, map_location=device)
        check_resume_init(ck, cfg.init, last)
        init_info = ck["extra"].get("init")
        model_train.load_state_dict(ck["state_dict"])
        if traj_train is not None:
            traj_train.load_state_dict(ck["extra"]["traj_state_dict"])
        if unlabeled is not None:
            if not ck["extra"].get("unlabeled_stream"):
                raise RuntimeError(f"{last}: was trained without unlabeled subjects; cannot resume "
                                   f"it semi-supervised (use another --out-dir)")
            unlabeled.load_state_dict(ck["extra"]["unlabeled_stream"])
        optimizer.load_state_dict(ck["optimizer"])
        start_epoch, lr, history = ck["epoch"], ck["extra"]["lr"], ck["extra"]["history"]
        for m in models:
            m.set_bn_momentum(bn_momentum_schedule(start_epoch, cfg.epochs, cfg.bn_momentum_start,
                                                   cfg.bn_momentum_end))
        print(f"resumed from {last} at epoch {start_epoch}")

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        for g in optimizer.param_groups:
            g["lr"] = lr
        rng = np.random.default_rng([cfg.seed, epoch])  # per-epoch stream: resume-exact
        order = rng.permutation(len(ds))
        if ctx.enabled:  # every rank the same number of equal steps
            order = order[:len(order) - len(order) % ctx.world_size]
        semi_on = unlabeled is not None and epoch >= cfg.warmup
        for m in models:
            m.train()
        sums: dict[str, float] = {}
        n_seen, data_time = 0, 0.0
        bar = progress_bar(range(0, len(order), frames_per_batch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                           unit="batch", progress=cfg.progress, leave=False)
        for b0 in bar:
            td = time.perf_counter()
            batch = ds.get_batch(rank_part(order[b0:b0 + frames_per_batch], ctx))
            unl = None
            if unlabeled is not None:
                # The stream advances every step (also in warm-up) as the reference's zip does.
                unl = unlabeled.next_batch() if semi_on else unlabeled.skip()
            data_time += time.perf_counter() - td
            with prec.autocast():
                loss, parts = _train_step(batch, unl, step_train, step_traj, js_out.parents, cfg, device)
            guarded_step(loss, optimizer, scaler, lambda: (
                f"non-finite training loss {parts} at epoch {epoch + 1}, step "
                f"{b0 // frames_per_batch + 1}, batch of windows {b0}..{b0 + len(batch['seq']) - 1} "
                f"(sequences {sorted({ds.ids[int(i)] for i in batch['seq'].tolist()})[:5]}); "
                f"{last} was not overwritten"))
            n = len(batch["kp2d"])
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * n
            n_seen += n
            bar.set_postfix(loss_mm=f"{sums['pos'] / n_seen * 1000:.1f}")
        lr *= cfg.lr_decay
        for m in models:
            m.set_bn_momentum(bn_momentum_schedule(epoch + 1, cfg.epochs, cfg.bn_momentum_start,
                                                   cfg.bn_momentum_end))
        seconds = time.perf_counter() - t0
        if ctx.enabled:  # metrics of the whole global batch stream
            tot = all_reduce_sums({**sums, "_n": float(n_seen)}, ctx)
            n_seen = int(tot.pop("_n"))
            sums = tot
        rec = {"epoch": epoch + 1, "train_mpjpe_mm": sums.get("pos", 0.0) / max(n_seen, 1) * 1000,
               "seconds": seconds, "data_seconds": data_time,
               "examples_per_s": n_seen / max(seconds, 1e-9), "precision": prec.name}
        if "traj" in sums:
            rec["train_traj_mm"] = sums["traj"] / max(n_seen, 1) * 1000
        if "proj_2d" in sums:  # normalised screen units x 1000, as the reference prints
            rec["train_2d_unlabeled"] = sums["proj_2d"] / max(n_seen, 1) * 1000
            rec["train_bone_mm"] = sums["bone"] / max(n_seen, 1) * 1000
        if ctx.is_main and test is not None and cfg.eval_every and (
                (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            model_eval.load_state_dict(model_train.state_dict())
            model_eval.to(device)
            rec["test_mpjpe_mm"] = _mean_mpjpe_mm(
                evaluate_lifter(model_eval, test, device, flip=cfg.flip_test, causal=cfg.causal), test)
        rec = broadcast_object(rec, ctx)  # rank 0 evaluated: one history on every rank
        history.append(rec)
        rngs = rng_extra(ctx)
        if not ctx.is_main:
            continue
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rec.items()}))
        extra = {"lr": lr, "history": history, "precision": prec.record(), **rngs, **data_info,
                 "world_size": ctx.world_size,
                 "traj_state_dict": traj_train.state_dict() if traj_train is not None else None,
                 "traj_args": traj_eval.constructor_args() if traj_eval is not None else None,
                 "unlabeled_stream": unlabeled.state_dict() if unlabeled is not None else None,
                 "init": init_info}
        ck_kw = dict(model_name="videopose3d", model_args={**model_eval.constructor_args(), "dense": cfg.dense},
                     state_dict=model_train.state_dict(), config=config_to_dict(cfg),
                     cache_fingerprints=fingerprints, epoch=epoch + 1,
                     optimizer=optimizer.state_dict(), extra=extra)
        save_epoch(out, epoch + 1, ck_kw, every=cfg.checkpoint_every)

    summary = {"out_dir": str(out), "checkpoint": str(last), "epochs": cfg.epochs, "history": history,
               "receptive_field": model_eval.receptive_field(),
               "parameters": sum(p.numel() for p in model_eval.parameters()),
               "semi_supervised": unlabeled is not None, "init": init_info,
               "precision": prec.record(), **data_info}
    return finish_run(out, summary, ctx)
