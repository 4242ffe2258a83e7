"""Training-speed benchmark of the temporal-convolution lifters, through real caches.

Configurations (VideoPose3D recipes):
  he27     27-frame model, 1024 channels, HumanEva-I-sized training set (10,041 frames of
           15 joints, listed twice for flip augmentation), batch 128;
  h36m243  243-frame model, 1024 channels, Human3.6M-sized training set (1.5 M frames of
           17 joints, the five training subjects x 4 cameras), batch --batch-243.

For each it measures, on the same batches:
  - poselift's training step (cache -> ``CacheWindowDataset.get_batch`` -> GEMM strided
    model -> MPJPE -> Adam): samples/s and the share of step time outside the model;
  - the same step with the conv1d implementation of the same model (the reference design);
  - the data path alone, ours vs an emulation of the reference's per-example Python
    gathering (``np.pad`` per chunk into float64 buffers, flip by index swap, cast).
Prints markdown rows with the command, machine and date.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_lifter_train.py --threads 2
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from poselift.datasets.cache import CacheHeader, CacheWriter
from poselift.datasets.joints import get_joint_set
from poselift.lifting.config import LiftConfig
from poselift.lifting.videopose3d.data import LiftData
from poselift.lifting.videopose3d.losses import mpjpe_loss

from poselift.lifting.videopose3d.model import TemporalModelOptimized1f, receptive_field_of

CONFIGS = {
    # name: (joint set, dataset, frames, sequences, widths, batch)
    "he27": ("humaneva15", "humaneva15", 10_041, 27, [3, 3, 3], 128),
    "h36m243": ("h36m17", "h36m", 1_500_000, 600, [3, 3, 3, 3, 3], 1024),
}


def build_caches(root: Path, joint_set: str, dataset: str, frames: int, n_seq: int) -> tuple[Path, Path]:
    """Synthetic gt + keypoints2d caches (random-walk joints), reused when present."""
    gt_path, kp_path = root / f"{dataset}_{frames}_3d.h5", root / f"{dataset}_{frames}_2d.h5"
    if gt_path.exists() and kp_path.exists():
        return gt_path, kp_path
    j = get_joint_set(joint_set).num_joints
    rng = np.random.default_rng(0)
    lengths = np.full(n_seq, frames // n_seq)
    lengths[: frames - lengths.sum()] += 1
    subjects = ["S1", "S5", "S6", "S7", "S8"]
    hdr = dict(dataset=dataset, joint_set=joint_set, source={"benchmark": "synthetic"})
    with CacheWriter(gt_path, CacheHeader(kind="gt", **hdr), overwrite=True) as wg, \
            CacheWriter(kp_path, CacheHeader(kind="keypoints2d", **hdr), overwrite=True) as wk:
        for i, t in enumerate(lengths):
            walk = np.cumsum(rng.normal(0, 0.01, (t, j, 3)), axis=0) + rng.normal(0, 0.3, (1, j, 3))
            walk[..., 2] += 5.0
            pix = (500 * walk[..., :2] / walk[..., 2:] + 500).astype(np.float32)
            attrs = {"subject": subjects[i % len(subjects)], "action": f"Take {i // len(subjects)}",
                     "camera": f"cam{i % 4}", "image_size": [1000, 1000]}
            sid = f"{attrs['subject']}/{attrs['action']}/{attrs['camera']}"
            wg.write_sequence(sid, {"joints_3d": walk.astype(np.float32)}, attrs)
            wk.write_sequence(sid, {"keypoints": pix}, attrs)
    return gt_path, kp_path


class ReferenceGather:
    """The reference ChunkedGenerator's batch assembly (chunk 1), emulated: a Python loop
    over examples, ``np.pad(..., 'edge')`` of every 2D and 3D chunk into reused float64
    buffers, flips by negation and left/right index swaps; then the float32 cast."""

    def __init__(self, data: LiftData, pad: int, batch: int) -> None:
        self.kp = [data.sequence_inputs(s).astype(np.float32) for s in data.ids]
        self.p3 = [(lambda a: a - a[:, :1])(data.sequence_targets(s)) for s in data.ids]
        js_in, js_out = get_joint_set(data.joints_in), get_joint_set(data.joints_out)
        self.kl, self.kr = list(js_in.left), list(js_in.right)
        self.jl, self.jr = list(js_out.left), list(js_out.right)
        self.pad = pad
        j_in, j_out = self.kp[0].shape[1], self.p3[0].shape[1]
        self.b2 = np.empty((batch, 2 * pad + 1, j_in, 2))
        self.b3 = np.empty((batch, 1, j_out, 3))

    def __call__(self, chunks: list[tuple[int, int, bool]]) -> tuple[torch.Tensor, torch.Tensor]:
        pad = self.pad
        for i, (s, t, flip) in enumerate(chunks):
            seq2, seq3 = self.kp[s], self.p3[s]
            lo, hi = max(t - pad, 0), min(t + pad + 1, len(seq2))
            self.b2[i] = np.pad(seq2[lo:hi], ((lo - (t - pad), t + pad + 1 - hi), (0, 0), (0, 0)), "edge")
            self.b3[i] = np.pad(seq3[t:t + 1], ((0, 0), (0, 0), (0, 0)), "edge")
            if flip:
                self.b2[i, :, :, 0] *= -1
                self.b2[i, :, self.kl + self.kr] = self.b2[i, :, self.kr + self.kl]
                self.b3[i, :, :, 0] *= -1
                self.b3[i, :, self.jl + self.jr] = self.b3[i, :, self.jr + self.jl]
        n = len(chunks)
        return (torch.from_numpy(self.b2[:n].astype(np.float32)),
                torch.from_numpy(self.b3[:n].astype(np.float32)))


def step_times(models: list[torch.nn.Module], ds, order: np.ndarray, batch: int, steps: int,
               warmup: int, device: torch.device) -> list[tuple[float, float]]:
    """Per model: (data seconds, model seconds) summed over ``steps`` timed training steps.

    The models train in lockstep on the same batches (A, B, A, B, ...), so load from other
    processes on a shared machine hits all of them alike."""
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3, amsgrad=True) for m in models]
    for m in models:
        m.to(device).train()
    acc = [[0.0, 0.0] for _ in models]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for i in range(warmup + steps):
        idx = order[(i * batch) % len(order):][:batch]
        for k, (model, opt) in enumerate(zip(models, opts)):
            t0 = time.perf_counter()
            b = ds.get_batch(idx)
            x, y = b["kp2d"].to(device, non_blocking=True), b["pose3d"].to(device, non_blocking=True)
            sync()
            t1 = time.perf_counter()
            loss = mpjpe_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync()
            t2 = time.perf_counter()
            if i >= warmup:
                acc[k][0] += t1 - t0
                acc[k][1] += t2 - t1
    return [(d, m) for d, m in acc]


def data_path_times(ds, ref: ReferenceGather, order: np.ndarray, batch: int, n: int) -> tuple[float, float]:
    """Seconds per batch of the data path alone: (ours, reference emulation)."""
    w = ds.windows
    t0 = time.perf_counter()
    for i in range(n):
        ds.get_batch(order[i * batch:(i + 1) * batch])
    ours = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for i in range(n):
        idx = order[i * batch:(i + 1) * batch]
        rows, flips = idx % len(w), idx >= len(w)
        ref([(int(w.seq[r]), int(w.target_start[r]), bool(f)) for r, f in zip(rows, flips)])
    return ours, (time.perf_counter() - t0) / n


def run_config(name: str, root: Path, steps: int, batch: int | None, device: torch.device,
               data_batches: int) -> list[str]:
    joint_set, dataset, frames, n_seq, widths, default_batch = CONFIGS[name]
    batch = batch or default_batch
    t0 = time.perf_counter()
    gt, kp = build_caches(root, joint_set, dataset, frames, n_seq)
    build_s = time.perf_counter() - t0
    cfg = LiftConfig(gt_cache=str(gt), keypoints_cache=str(kp), train_subjects=["S1", "S5", "S6", "S7", "S8"],
                     architecture=widths, channels=1024)
    data = LiftData.open(cfg.gt_cache, cfg.keypoints_cache, cfg.train_subjects)
    pad = (receptive_field_of(widths) - 1) // 2
    t0 = time.perf_counter()
    ds = data.dataset(data.windows(left=pad, right=pad, chunk=1), flip="double", with_trajectory=False)
    load_s = time.perf_counter() - t0
    order = np.random.default_rng(0).permutation(len(ds))
    j_in = get_joint_set(joint_set).num_joints
    kw = dict(num_joints_in=j_in, in_features=2, num_joints_out=j_in, filter_widths=widths,
              causal=False, dropout=0.25, channels=1024)
    torch.manual_seed(0)
    gemm = TemporalModelOptimized1f(**kw, impl="gemm")
    conv = TemporalModelOptimized1f(**kw, impl="conv")
    conv.load_state_dict(gemm.state_dict())
    warm = 2
    (d_g, m_g), (d_c, m_c) = step_times([gemm, conv], ds, order, batch, steps, warm, device)
    ref = ReferenceGather(data, pad, batch)
    ours_b, ref_b = data_path_times(ds, ref, order, batch, data_batches)
    n = steps * batch
    print(f"# {name}: {len(ds):,} training windows ({frames:,} frames x2 flip), cache build {build_s:.1f} s "
          f"(reused if 0), preload {load_s:.1f} s", file=sys.stderr)
    return [
        f"| {name} | {receptive_field_of(widths)} | {batch} | {steps} | GEMM strided (ours) | "
        f"{n / (d_g + m_g):.1f} | {100 * d_g / (d_g + m_g):.2f} % | {1000 * ours_b:.2f} |",
        f"| {name} | {receptive_field_of(widths)} | {batch} | {steps} | conv1d strided (reference design) | "
        f"{n / (d_c + m_c):.1f} | {100 * d_c / (d_c + m_c):.2f} % | - |",
        f"| {name} | {receptive_field_of(widths)} | {batch} | - | reference gathering (emulated) | - | "
        f"{100 * ref_b / (ref_b + m_g / steps):.2f} % (with GEMM model) | {1000 * ref_b:.2f} |",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="he27,h36m243", help="comma-separated: he27, h36m243")
    p.add_argument("--steps", type=int, default=200, help="timed steps for he27 (default 200)")
    p.add_argument("--steps-243", type=int, default=10, help="timed steps for h36m243 (default 10)")
    p.add_argument("--batch-243", type=int, default=None,
                   help="batch for h36m243 (default 1024 as the recipe; 128 keeps a 2-core CPU run short)")
    p.add_argument("--data-batches", type=int, default=50, help="batches timed for the data-path comparison")
    p.add_argument("--cache-dir", type=Path, default=None, help="where the synthetic caches go (reused)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    root = a.cache_dir or Path(tempfile.mkdtemp(prefix="bench_lifter_"))
    root.mkdir(parents=True, exist_ok=True)
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
               f"{torch.__version__}, {torch.get_num_threads()} threads"
               if device.type == "cpu" else torch.cuda.get_device_name(device))
    print(f"`{' '.join(shlex.quote(x) for x in ['benchmarks/bench_lifter_train.py', *(argv or sys.argv[1:])])}`"
          f" on {machine}, {datetime.date.today().isoformat()}, load average at start "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| config | RF | batch | steps | training step | samples/s | time outside the model | "
          "data path ms/batch |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    for name in [c for c in a.configs.split(",") if c]:
        steps = a.steps if name == "he27" else a.steps_243
        batch = a.batch_243 if name == "h36m243" else None
        for row in run_config(name, root, steps, batch, device, a.data_batches):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
