"""TCMR training from feature caches, readable top to bottom (the published TCMR recipe).

Adam (lr 5e-5), ReduceLROnPlateau(factor 0.1, patience 5) on validation PA-MPJPE, 500
iterations per epoch, batches of 32 = int(32 * 0.6) 2D-only windows + the rest 3D windows,
loss weights 300/300/60/0.06, targets of the middle frame for [past, future, fused].

Differences from the reference, on purpose: targets are float32; model selection only on a
validation source that is none of the test sources (refused otherwise); batches are a pure
function of (seed, step) so a resumed run reproduces an uninterrupted one; checkpoints hold
no SMPL buffers; the device is chosen automatically, with AMP on CUDA.

Data-parallel under ``torchrun`` (``distributed.py``): ``batch_size`` stays the global batch;
each rank takes a contiguous part of the step's 2D draw and of its 3D draw. When both parts
divide evenly (e.g. batch 32 with ratio 0.5 on 2 ranks: 8 + 8 per rank) the averaged gradient
equals single-process training; otherwise ranks hold one row more or less per group and
their per-rank mean losses are weighted equally (a difference of at most 1/part size per
term, warned about at start). Rank 0 validates, steps nothing differently (the plateau
scheduler sees the broadcast value) and writes the only checkpoints.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from poselift.core.compile import maybe_compile
from poselift.core.device import resolve_device
from poselift.core.optim import make_adam
from poselift.core.precision import resolve_precision
from poselift.core.progress import progress_bar
from poselift.datasets.cache import CacheError

from ..config import config_to_dict
from ..distributed import (DistContext, all_reduce_sums, broadcast_object, init_distributed, rank_part,
                           shutdown, wrap_ddp)
from ..run import (check_resume_init, finish_run, guarded_step, init_provenance, resume_checkpoint, rng_extra,
                   save_epoch, seed_everything, start_run)
from .smpl_model import build_spin_smpl, load_mean_params
from .model import TCMR
from .interop import SMPL_PREFIX, load_tcmr_state_dict
from .data import (MixedBatchSampler, TCMRWindowData, open_source, source_paths,
                        tcmr_stride, train_windows)
from .eval import PROTOCOLS, evaluate_source, h36m_regressor
from .losses import TCMRLoss, TCMRLossWeights
__all__ = ["TCMRConfig", "train_tcmr", "build_tcmr", "check_validation_split", "StepBatches",
           "load_init"]


@dataclass
class TCMRConfig:
    """TCMR training; sources are cache name prefixes in ``cache_dir`` (see ``data``)."""

    cache_dir: str = "caches/tcmr"
    train_2d: list[str] = field(default_factory=lambda: ["insta_train"])
    train_3d: list[str] = field(default_factory=lambda: ["3dpw_train", "mpii3d_train_scale12",
                                                         "h36m_train_25fps_nosmpl"])
    no_smpl: list[str] = field(default_factory=list)   # 3D sources trained without SMPL terms
    val: str = "3dpw_val"
    val_protocol: str = "3dpw"
    test: list[str] = field(default_factory=lambda: ["3dpw_test"])
    body_model_dir: str = "data/base_data"
    pretrained_regressor: str = ""                       # SPIN checkpoint (['model'] fc1..deccam) or zoo name
    init: str = ""                                       # start weights: TCMR .pth.tar, poselift checkpoint or zoo name
    # model (release: 2 layers, hidden 1024)
    n_layers: int = 2
    hidden_size: int = 1024
    feat_dim: int = 2048
    regressor_hidden: int = 1024
    regressor_dropout: float = 0.5                       # SPIN regressor's dropout (reference 0.5)
    # optimisation
    lr: float = 5e-5
    weight_decay: float = 0.0
    batch_size: int = 32
    ratio_2d: float = 0.6
    balanced: bool = False
    overlap: float = 0.9375                              # 15/16 -> stride 1 (Table 4)
    iters_per_epoch: int = 500
    epochs: int = 30
    plateau_factor: float = 0.1
    plateau_patience: int = 5
    w_kp_2d: float = 300.0
    w_kp_3d: float = 300.0
    w_pose: float = 60.0
    w_shape: float = 0.06
    # validation
    val_batch_size: int = 32
    val_pad: str = "repeat_target"
    # run
    seed: int = 1
    device: str = "auto"
    amp: bool = True                                     # CUDA: precision fp32 -> auto (AMP)
    precision: str = "fp32"                                 # fp32 | bf16 | fp16 | auto (poselift.core.precision)
    compile: bool = False                                   # torch.compile the model (eager fallback)
    num_threads: int = 0
    num_workers: int = 0
    progress: bool = True
    out_dir: str = "runs/tcmr"


def check_validation_split(cfg: TCMRConfig) -> None:
    """Refuse model selection on a test source (by name, file or content fingerprint)."""
    if cfg.val in cfg.test:
        raise ValueError(f"validation source {cfg.val!r} is also a test source; select models "
                         f"on a validation split (TCMR's Table-6 H36M config validates on test)")
    from poselift.datasets.cache import Cache

    vf, vl = source_paths(cfg.cache_dir, cfg.val)
    vfp = {Cache(vf).content_fingerprint, Cache(vl).content_fingerprint}
    for t in cfg.test:
        try:
            tf, tl = source_paths(cfg.cache_dir, t)
        except FileNotFoundError:
            continue
        same_file = {vf.resolve(), vl.resolve()} & {tf.resolve(), tl.resolve()}
        same_data = vfp & {Cache(tf).content_fingerprint, Cache(tl).content_fingerprint}
        if same_file or same_data:
            raise ValueError(f"validation source {cfg.val!r} uses the same cache as test source "
                             f"{t!r} ({sorted(map(str, same_file)) or 'identical content'})")


def build_tcmr(cfg: TCMRConfig) -> TCMR:
    """Model from the config (SMPL and mean parameters from ``body_model_dir``)."""
    smpl = build_spin_smpl(cfg.body_model_dir)
    mean = {}
    if (Path(cfg.body_model_dir) / "smpl_mean_params.npz").exists():
        m = load_mean_params(cfg.body_model_dir)
        mean = {"init_pose": m["pose"], "init_shape": m["shape"], "init_cam": m["cam"]}
    model = TCMR(smpl, n_layers=cfg.n_layers, hidden_size=cfg.hidden_size, seq_len=16,
                 feat_dim=cfg.feat_dim, regressor_hidden=cfg.regressor_hidden, **mean)
    for m in model.regressor.modules():  # dropout is no constructor argument of TCMR
        if isinstance(m, torch.nn.Dropout):
            m.p = cfg.regressor_dropout
    if cfg.pretrained_regressor:
        _load_spin_regressor(model, cfg.pretrained_regressor)
    return model


_SPIN_HEADS = ("fc1", "fc2", "decpose", "decshape", "deccam")


def _load_spin_regressor(model: TCMR, path: str) -> None:
    """Copy the iterative regressor heads of a SPIN/HMR checkpoint (``{'model': state_dict}``)
    into ``model.regressor``; a missing or misshaped head key raises one CheckpointError."""
    from poselift.core.checkpoints import load_checkpoint, load_strict, unwrap_state_dict
    from poselift.zoo import resolve_weights

    path = str(resolve_weights(path))  # a zoo name ("spin-hmr") or a path
    sd = unwrap_state_dict(load_checkpoint(path), path, wrappers=("model",))
    # the heads as one module: its keys (fc1.weight, ...) are the checkpoint's, and loading it
    # loads the regressor's own layers; the backbone and SMPL keys of the file are not ours
    heads = torch.nn.ModuleDict({n: getattr(model.regressor, n) for n in _SPIN_HEADS})
    load_strict(heads, {k: v for k, v in sd.items() if k.split(".")[0] in _SPIN_HEADS}, path)


def load_init(model: TCMR, path: str) -> dict[str, Any]:
    """Start weights from a released TCMR ``.pth.tar`` (``gen_state_dict``) or a poselift TCMR
    checkpoint, loaded strictly into the CONFIGURED model (the config's n_layers, hidden_size,
    feat_dim, regressor_hidden are kept; SMPL stays the body-model folder's). A file that does
    not fit is refused naming the file and the key; VIBE files are refused (this loop trains
    TCMR). Optimizer and epoch are not taken from the file. Returns the provenance record."""
    from poselift.zoo import resolve_weights

    from ..checkpoint import CheckpointError, load_checkpoint
    from .interop import infer_tcmr_config, read_tcmr_checkpoint

    src = resolve_weights(path)
    try:
        ck = load_checkpoint(src)
    except CheckpointError:
        ck = None
    if ck is not None:
        if ck["model_name"] != "tcmr":
            raise CheckpointError(f"{src}: holds a {ck['model_name']!r} model, not TCMR")
        kind, sd, epoch = "poselift", ck["state_dict"], ck["epoch"]
    else:
        raw = read_tcmr_checkpoint(src)
        kind, sd, epoch = "tcmr", raw["gen_state_dict"], raw.get("epoch")
        sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
        if infer_tcmr_config(sd, src).model == "vibe":
            raise CheckpointError(f"{src}: holds a VIBE model (encoder.gru.*); poselift-train tcmr "
                                  f"fine-tunes TCMR only")
    try:
        load_tcmr_state_dict(model, sd, src)
    except CheckpointError as e:
        try:
            held = f"; the file holds {infer_tcmr_config(sd, src).kwargs}"
        except CheckpointError:
            held = ""
        enc = model.encoder.gru_cur
        raise CheckpointError(f"{e}{held}; the config has n_layers={enc.num_layers}, hidden_size="
                              f"{enc.hidden_size}, feat_dim={model.feat_dim}, regressor_hidden="
                              f"{model.regressor.fc1.out_features}") from None
    return init_provenance(src, kind, epoch=None if epoch is None else int(epoch))


class StepBatches(torch.utils.data.Dataset):
    """Item ``s`` = the whole training batch of step ``s`` (so DataLoader workers prefetch)."""

    def __init__(self, sampler: MixedBatchSampler, data_2d: list[TCMRWindowData],
                 data_3d: list[TCMRWindowData], ctx: DistContext | None = None) -> None:
        self.sampler, self.groups = sampler, (data_2d, data_3d)
        self.ctx = ctx or DistContext()  # which part of every step's batch this rank trains on

    def __len__(self) -> int:
        return 1 << 40

    def __getitem__(self, step: int) -> dict[str, Any]:
        parts: list[list[dict[str, torch.Tensor]]] = [[], []]
        for g in (0, 1):
            ds, win = self.sampler.group_batch(g, int(step))
            keep = rank_part(np.arange(len(ds)), self.ctx)
            ds, win = ds[keep], win[keep]
            for d in np.unique(ds):
                parts[g].append(self.groups[g][d].get_batch(np.sort(win[ds == d])))
        out: dict[str, Any] = {"n_2d": sum(len(p["features"]) for p in parts[0])}
        allp = parts[0] + parts[1]
        out["features"] = torch.cat([p["features"] for p in allp])
        out["kp_2d"] = torch.cat([p["kp_2d"] for p in allp])
        for k, tail in (("kp_3d", (49, 3)), ("theta", (85,)), ("w_3d", ()), ("w_smpl", ())):
            out[k] = torch.cat([p[k] for p in parts[1]]) if parts[1] else torch.zeros((0,) + tail)
        return out


def _rep3(x: torch.Tensor) -> torch.Tensor:
    """Targets of the middle frame for the [past, future, fused] outputs: (B, ...) -> (B, 3, ...)."""
    return x.unsqueeze(1).expand(x.shape[0], 3, *x.shape[1:])


def train_tcmr(cfg: TCMRConfig, resume: bool = True) -> dict[str, Any]:
    """Train (or resume) TCMR; returns a summary (also written to ``summary.json``).
    Data-parallel under ``torchrun`` (module docstring)."""
    check_validation_split(cfg)
    if cfg.val_protocol not in PROTOCOLS:
        raise KeyError(f"unknown val_protocol {cfg.val_protocol!r}; known: {sorted(PROTOCOLS)}")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    ctx = init_distributed(resolve_device(cfg.device))
    try:
        return _train(cfg, resume, ctx)
    finally:
        shutdown(ctx)


def _train(cfg: TCMRConfig, resume: bool, ctx: DistContext) -> dict[str, Any]:
    out = Path(cfg.out_dir)
    start_run(cfg, out, ctx)
    device = ctx.device
    # ``amp`` (default on) keeps the earlier CUDA behaviour: fp32 there means AMP (auto).
    prec = resolve_precision("auto" if cfg.amp and device.type == "cuda" and cfg.precision == "fp32"
                             else cfg.precision, device).apply()
    seed_everything(cfg.seed)

    stride = tcmr_stride(cfg.overlap)
    src_2d = [open_source(cfg.cache_dir, n, feat_dim=cfg.feat_dim, use_smpl=False) for n in cfg.train_2d]
    src_3d = [open_source(cfg.cache_dir, n, feat_dim=cfg.feat_dim, use_smpl=n not in cfg.no_smpl)
              for n in cfg.train_3d]
    for s in src_3d:
        if not s.is_3d:
            raise CacheError(f"{s.labels.path}: source {s.name!r} is in train_3d but has no 3D joints")
    data_2d = [TCMRWindowData(s, train_windows(s, stride)) for s in src_2d]
    data_3d = [TCMRWindowData(s, train_windows(s, stride)) for s in src_3d]
    sampler = MixedBatchSampler([len(d) for d in data_2d], [len(d) for d in data_3d],
                                cfg.batch_size, cfg.ratio_2d, cfg.balanced, cfg.seed)
    val_src = open_source(cfg.cache_dir, cfg.val, feat_dim=cfg.feat_dim)
    if ctx.enabled and any(k % ctx.world_size for k in sampler.take):
        print(f"warning: per-step 2D/3D counts {sampler.take} do not divide by {ctx.world_size} "
              f"processes; rank losses are averaged with equal weight (not exactly the "
              f"single-process batch mean)")

    last, best_path = out / "last.pt", out / "best.pt"
    resuming = resume and last.exists()
    model = build_tcmr(cfg)
    init_info = load_init(model, cfg.init) if cfg.init and not resuming else None
    model = model.to(device)
    if ctx.enabled:  # same init everywhere (DDP broadcasts rank 0's), own dropout stream per rank
        torch.manual_seed(cfg.seed + 7919 * ctx.rank)
    # No BatchNorm in TCMR, and SMPL buffers are constants: nothing to broadcast per step.
    step_model = maybe_compile(wrap_ddp(model, ctx, broadcast_buffers=False), cfg.compile)
    j_reg = h36m_regressor(cfg.body_model_dir, model.regressor.smpl.v_template.shape[0]) \
        if PROTOCOLS[cfg.val_protocol].h36m_regressor else None
    optimizer = make_adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    loss_fn = TCMRLoss(TCMRLossWeights(cfg.w_kp_2d, cfg.w_kp_3d, cfg.w_pose, cfg.w_shape))
    scaler = prec.grad_scaler()

    fingerprints = {f"{s.name}/{c}": getattr(s, c).content_fingerprint
                    for s in src_2d + src_3d + [val_src] for c in ("features", "labels")}
    model_args = dict(n_layers=cfg.n_layers, hidden_size=cfg.hidden_size, seq_len=16,
                      feat_dim=cfg.feat_dim, regressor_hidden=cfg.regressor_hidden)
    start_epoch, history, best = 0, [], float("inf")
    if resuming:
        ck = resume_checkpoint(last, fingerprints, ctx)
        check_resume_init(ck, cfg.init, last)
        init_info = ck["extra"].get("init")
        load_tcmr_state_dict(model, ck["state_dict"], last)
        optimizer.load_state_dict(ck["optimizer"])
        ex = ck["extra"]
        scheduler.load_state_dict(ex["scheduler"])
        start_epoch, history, best = ck["epoch"], ex["history"], ex["best"]
        print(f"resumed from {last} at epoch {start_epoch}")

    batches = StepBatches(sampler, data_2d, data_3d, ctx)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        steps = range(epoch * cfg.iters_per_epoch, (epoch + 1) * cfg.iters_per_epoch)
        loader = torch.utils.data.DataLoader(
            batches, batch_size=None, sampler=steps, num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg.seed + epoch))  # keeps global RNG untouched
        sums: dict[str, float] = {}
        data_time, it = 0.0, iter(loader)
        bar = progress_bar(range(len(steps)), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="it",
                           progress=cfg.progress, leave=False)
        for step in bar:
            td = time.perf_counter()
            b = next(it)
            data_time += time.perf_counter() - td
            n2 = int(b["n_2d"])
            x = b["features"].to(device, non_blocking=True)
            with prec.autocast():
                pred = step_model(x, is_train=True)
            pred = {k: pred[k].float() for k in ("kp_2d", "kp_3d", "theta")}
            kp2d = _rep3(b["kp_2d"].to(device))
            t2d = {"kp_2d": kp2d[:n2]} if n2 else None
            t3d = {"kp_2d": kp2d[n2:], "kp_3d": _rep3(b["kp_3d"].to(device)),
                   "theta": _rep3(b["theta"].to(device)),
                   "w_3d": _rep3(b["w_3d"].to(device)), "w_smpl": _rep3(b["w_smpl"].to(device))}
            loss, terms = loss_fn(pred, t2d, t3d)
            guarded_step(loss, optimizer, scaler, lambda: (
                f"non-finite loss at epoch {epoch + 1}, step {step + 1} of {len(steps)}, batch "
                f"{steps[step]}: { {k: float(v) for k, v in terms.items()} }; {last} was not overwritten"))
            for k, v in dict(terms, loss=loss).items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            bar.set_postfix(loss=f"{sums['loss'] / (bar.n + 1):.3f}")
        train_s = time.perf_counter() - t0
        sums = {k: v / ctx.world_size for k, v in all_reduce_sums(sums, ctx).items()}
        val = None
        if ctx.is_main:  # one validation, shared: the plateau schedule must agree on every rank
            report, _, _ = evaluate_source(model, val_src, cfg.val_protocol, J_regressor=j_reg,
                                           device=device, batch_size=cfg.val_batch_size, pad=cfg.val_pad)
            val = report.overall()
        val = broadcast_object(val, ctx)
        pa = val["p_mpjpe"]["mean"]
        scheduler.step(pa)
        rec = {"epoch": epoch + 1, **{k: v / len(steps) for k, v in sums.items()},
               "val_pa_mpjpe_mm": pa, "val_mpjpe_mm": val["mpjpe"]["mean"],
               "val_pve_mm": val.get("pve", {}).get("mean"),
               "lr": optimizer.param_groups[0]["lr"], "seconds": train_s,
               "data_fraction": data_time / max(train_s, 1e-9),
               "steps_per_s": len(steps) / max(train_s, 1e-9), "world_size": ctx.world_size,
               "precision": prec.name}
        history.append(rec)
        rngs = rng_extra(ctx)
        is_best = pa < best
        best = min(best, pa)
        if not ctx.is_main:
            continue
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()}))
        extra = {"scheduler": scheduler.state_dict(), "history": history, "best": best, **rngs,
                 "val_protocol": cfg.val_protocol, "init": init_info, "precision": prec.record()}
        sd = {k: v for k, v in model.state_dict().items() if not k.startswith(SMPL_PREFIX)}
        ck_kw = dict(model_name="tcmr", model_args=model_args, state_dict=sd,
                     config=config_to_dict(cfg), cache_fingerprints=fingerprints,
                     epoch=epoch + 1, optimizer=optimizer.state_dict(), extra=extra)
        save_epoch(out, epoch + 1, ck_kw, is_best=is_best)
    summary = {"out_dir": str(out), "checkpoint": str(last), "best": str(best_path),
               "best_val_pa_mpjpe_mm": best, "epochs": cfg.epochs, "history": history,
               "train_windows": {s.name: len(d) for s, d in zip(src_2d + src_3d, data_2d + data_3d)},
               "stride": stride, "init": init_info}
    return finish_run(out, summary, ctx)
