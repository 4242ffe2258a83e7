"""Training-speed and accuracy benchmark of the temporal-convolution lifter, in ONE run.

Data: synthetic caches of HumanEva-I size (he27: 10,041 frames of 15 joints, x2 flip
augmentation, 27-frame model, 1024 channels, batch 128) or Human3.6M size (h36m243).

Every variant trains in lockstep on the same batches (A, B, C, ... per step) at each thread
count, so load from other processes on a shared machine hits all of them alike:
  reference-style  per-example Python gathering (np.pad per window, float64 buffers) + the
                   reference's channels-first conv1d model + torch's single-tensor Adam;
  before           poselift before issue 14: vectorised gather + GEMM strided model as it was
                   then (BeforeModel below) + the single-tensor Adam (torch's CPU default), fp32;
  fp32             poselift now: fused Adam (amsgrad), FastDropout, windows laid out on the
                   activation side, float32;
  bf16             poselift now with ``precision: bf16`` (CPU autocast);
  compile          (``--compile``) fp32 with ``torch.compile``.
Printed: the machine (CPU model, AVX512/BF16/AMX flags), measured fp32 and bf16 matmul peaks
(2048^2) per thread count, the step's FLOPs per example, samples/s, achieved fraction of
peak; then an accuracy check (P-MPJPE of fp32 vs bf16 training at equal epochs on held-out
synthetic data).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_lifter_train.py --threads 1,2
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_line, matmul_peak_gflops, step_flops, with_threads  # noqa: E402

from poselift.core.compile import maybe_compile
from poselift.core.optim import make_adam
from poselift.core.precision import resolve_precision
from poselift.datasets.cache import CacheHeader, CacheWriter
from poselift.datasets.joints import get_joint_set
from poselift.lifting.videopose3d.data import LiftData
from poselift.evaluation.metrics import p_mpjpe
from poselift.lifting.videopose3d.losses import mpjpe_loss

from poselift.lifting.videopose3d.model import TemporalModelOptimized1f, receptive_field_of

CONFIGS = {
    # name: (joint set, dataset, frames, sequences, widths, batch)
    "he27": ("humaneva15", "humaneva15", 10_041, 27, [3, 3, 3], 128),
    "h36m243": ("h36m17", "h36m", 1_500_000, 600, [3, 3, 3, 3, 3], 1024),
}


def build_caches(root: Path, joint_set: str, dataset: str, frames: int, n_seq: int,
                 kind: str = "walk") -> tuple[Path, Path]:
    """Synthetic gt + keypoints2d caches, reused when present. ``walk``: independent random
    walks per joint (timing only: root-relative depth is not predictable from 2D); ``body``:
    one fixed skeleton turning about the vertical axis with small periodic joint motion, so 3D
    is learnable from 2D and training converges (accuracy check)."""
    gt_path, kp_path = root / f"{dataset}_{frames}_{kind}_3d.h5", root / f"{dataset}_{frames}_{kind}_2d.h5"
    if gt_path.exists() and kp_path.exists():
        return gt_path, kp_path
    j = get_joint_set(joint_set).num_joints
    rng = np.random.default_rng(0)
    skeleton = np.random.default_rng(7).normal(0, 0.25, (j, 3))
    lengths = np.full(n_seq, frames // n_seq)
    lengths[: frames - lengths.sum()] += 1
    subjects = ["S1", "S5", "S6", "S7", "S8"]
    hdr = dict(dataset=dataset, joint_set=joint_set, source={"benchmark": "synthetic"})
    with CacheWriter(gt_path, CacheHeader(kind="gt", **hdr), overwrite=True) as wg, \
            CacheWriter(kp_path, CacheHeader(kind="keypoints2d", **hdr), overwrite=True) as wk:
        for i, t in enumerate(lengths):
            if kind == "walk":
                walk = np.cumsum(rng.normal(0, 0.01, (t, j, 3)), axis=0) + rng.normal(0, 0.3, (1, j, 3))
            else:
                tt = np.arange(t)[:, None, None]
                local = skeleton + 0.04 * np.sin(rng.uniform(0.05, 0.2, (1, j, 3)) * tt
                                                 + rng.uniform(0, 6.3, (1, j, 3)))
                yaw = rng.uniform(0, 6.3) + np.cumsum(rng.normal(0, 0.02, t))
                c, s_ = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
                walk = np.stack([c * local[..., 0] + s_ * local[..., 2], local[..., 1],
                                 -s_ * local[..., 0] + c * local[..., 2]], -1)
                walk[..., :2] += rng.normal(0, 0.5, (1, 1, 2))
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


class BeforeModel(TemporalModelOptimized1f):
    """The GEMM lifter as it was before issue 14, kept here so that "before" stays what it
    was: torch's ``nn.Dropout`` (bernoulli_ mask), the strided weights permuted to the
    activations' (frame, channel) order on every call, pointwise weights taken by ``select``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.drop = torch.nn.Dropout(self.dropout)

    def _forward_gemm(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        h = x.transpose(1, 2)
        h = self.drop(self.relu(self._bn(self._strided(h, self.expand_conv), self.expand_bn)))
        for i in range(1, len(self.pad)):
            w = self.filter_widths[i]
            res = h[:, self.causal_shift[i] + w // 2:: w]
            h = self.drop(self.relu(self._bn(self._strided(h, self.layers_conv[2 * i - 2]),
                                             self.layers_bn[2 * i - 2])))
            pointwise = self.layers_conv[2 * i - 1].weight[:, :, 0]
            h = res + self.drop(self.relu(self._bn(h @ pointwise.t(), self.layers_bn[2 * i - 1])))
        out = h @ self.shrink.weight[:, :, 0].t() + self.shrink.bias
        return out.transpose(1, 2).reshape(B, -1, h.shape[1])

    @staticmethod
    def _strided(h: torch.Tensor, conv: torch.nn.Conv1d) -> torch.Tensor:
        c_out, c_in, k = conv.weight.shape
        b, t = h.shape[0], h.shape[1] // k
        return h.reshape(b, t, k * c_in) @ conv.weight.permute(0, 2, 1).reshape(c_out, k * c_in).t()


class Variant:
    """One way of running the training step: its own model copy, optimizer and gather."""

    def __init__(self, name: str, model: torch.nn.Module, adam: str, precision: str,
                 gather, compile_: bool = False) -> None:
        self.name, self.model, self.gather = name, model, gather
        self.opt = make_adam(model.parameters(), lr=1e-3, amsgrad=True, impl=adam)
        self.prec = resolve_precision(precision, "cpu")
        self.fwd = maybe_compile(model, compile_)
        self.seconds = 0.0
        self.examples = 0

    def step(self, idx: np.ndarray) -> None:
        x, y = self.gather(idx)
        with self.prec.autocast():
            loss = mpjpe_loss(self.fwd(x).float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def lockstep(variants: list[Variant], order: np.ndarray, batch: int, steps: int, warmup: int
             ) -> dict[torch.dtype, float]:
    """Time ``steps`` steps of every variant, interleaved per step (A, B, C, A, B, C, ...),
    with one 2048^2 matmul per dtype in every round; returns the matmuls' mean GFLOP/s (the
    peak under the same load as the steps)."""
    for v in variants:
        v.seconds, v.examples = 0.0, 0
        v.model.train()
    probe = {dt: [0.0, 0] for dt in (torch.float32, torch.bfloat16)}
    for i in range(warmup + steps):
        idx = order[(i * batch) % (len(order) - batch):][:batch]
        for dt, acc in probe.items():
            gf = matmul_peak_gflops(dt, torch.device("cpu"), seconds=0.0)
            if i >= warmup:
                acc[0] += 1.0 / gf
                acc[1] += 1
        for v in variants:
            t0 = time.perf_counter()
            v.step(idx)
            if i >= warmup:
                v.seconds += time.perf_counter() - t0
                v.examples += len(idx)
    return {dt: n / inv for dt, (inv, n) in probe.items()}


def data_path_times(ds, ref: ReferenceGather, order: np.ndarray, batch: int, n: int) -> tuple[float, float]:
    """Seconds per batch of the data path alone: (ours, reference emulation)."""
    t0 = time.perf_counter()
    for i in range(n):
        ds.get_batch(order[i * batch:(i + 1) * batch])
    ours = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for i in range(n):
        ref(ref_chunks(ds, order[i * batch:(i + 1) * batch]))
    return ours, (time.perf_counter() - t0) / n


def ref_chunks(ds, idx: np.ndarray) -> list[tuple[int, int, bool]]:
    w = ds.windows
    rows, flips = idx % len(w), idx >= len(w)
    return [(int(w.seq[r]), int(w.target_start[r]), bool(f)) for r, f in zip(rows, flips)]


def open_data(name: str, root: Path, subjects: list[str], kind: str = "walk"
              ) -> tuple[LiftData, int, list[int], str]:
    joint_set, dataset, frames, n_seq, widths, _ = CONFIGS[name]
    gt, kp = build_caches(root, joint_set, dataset, frames, n_seq, kind)
    return LiftData.open(str(gt), str(kp), subjects), (receptive_field_of(widths) - 1) // 2, widths, joint_set


def speed(name: str, root: Path, threads: list[int], steps: int, batch: int | None,
          compile_: bool, data_batches: int) -> None:
    batch = batch or CONFIGS[name][5]
    data, pad, widths, joint_set = open_data(name, root, ["S1", "S5", "S6", "S7", "S8"])
    ds = data.dataset(data.windows(left=pad, right=pad, chunk=1), flip="double", with_trajectory=False)
    order = np.random.default_rng(0).permutation(len(ds))
    ref = ReferenceGather(data, pad, batch)
    j = get_joint_set(joint_set).num_joints
    kw = dict(num_joints_in=j, in_features=2, num_joints_out=j, filter_widths=widths,
              causal=False, dropout=0.25, channels=1024)
    torch.manual_seed(0)
    init = TemporalModelOptimized1f(**kw, impl="gemm").state_dict()

    def model(impl: str, before: bool = False) -> TemporalModelOptimized1f:
        m = (BeforeModel if before else TemporalModelOptimized1f)(**kw, impl=impl)
        m.load_state_dict(init)
        return m

    def ours(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        b = ds.get_batch(idx)
        return b["kp2d"], b["pose3d"]

    variants = [Variant("reference-style (per-example gather, conv1d, nn.Dropout, Adam loop)",
                        model("conv", before=True), "loop", "fp32", lambda idx: ref(ref_chunks(ds, idx))),
                Variant("before (GEMM as before issue 14, Adam loop), fp32", model("auto", before=True),
                        "loop", "fp32", ours),
                Variant("now: fused Adam, FastDropout, activation-side window layout, fp32",
                        model("auto"), "fused", "fp32", ours),
                Variant("now, bf16 autocast", model("auto"), "fused", "bf16", ours)]
    if compile_:
        variants.append(Variant("now: fp32 + torch.compile", model("auto"), "fused", "fp32", ours, True))
    probe = variants[2]
    flops = step_flops(lambda: probe.step(order[:batch])) / batch
    print(f"\n### {name}: {len(ds):,} training windows, RF {2 * pad + 1}, 1024 channels, batch {batch}, "
          f"{steps} timed steps per variant and thread count\n")
    print(f"Step FLOPs per example (matmuls, forward + backward, torch's counter): {flops / 1e6:.1f} M\n")
    print("Peaks: best single 2048^2 matmul over 2 s before the round, and (in brackets) the mean "
          "of one such matmul per lockstep round, i.e. under the same load as the steps; the "
          "fraction of peak is taken against the latter.\n")
    print("| threads | fp32 peak GFLOP/s | bf16 peak GFLOP/s | variant | samples/s | vs reference-style "
          "| vs before | achieved GFLOP/s | fraction of fp32 peak | of bf16 peak |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for t in threads:
        restore = with_threads(t)
        b32 = matmul_peak_gflops(torch.float32, torch.device("cpu"), seconds=2.0)
        b16 = matmul_peak_gflops(torch.bfloat16, torch.device("cpu"), seconds=2.0)
        mean = lockstep(variants, order, batch, steps, warmup=2)
        p32, p16 = mean[torch.float32], mean[torch.bfloat16]
        restore()
        rate = {v.name: v.examples / v.seconds for v in variants}
        r_ref, r_before = rate[variants[0].name], rate[variants[1].name]
        for v in variants:
            r = rate[v.name]
            print(f"| {t} | {b32:.0f} ({p32:.0f}) | {b16:.0f} ({p16:.0f}) | {v.name} | {r:.1f} | "
                  f"{r / r_ref:.2f}x | {r / r_before:.2f}x | {r * flops / 1e9:.1f} | "
                  f"{100 * r * flops / 1e9 / p32:.0f} % | {100 * r * flops / 1e9 / p16:.0f} % |", flush=True)
    ours_b, ref_b = data_path_times(ds, ref, order, batch, data_batches)
    print(f"\nData path alone: vectorised gather {1000 * ours_b:.2f} ms/batch, reference-style "
          f"per-example gather {1000 * ref_b:.2f} ms/batch ({ref_b / ours_b:.1f}x)")


def accuracy(name: str, root: Path, epochs: int, channels: int, batch: int, threads: int) -> None:
    """fp32 vs bf16 training from one init on the same batches; P-MPJPE on held-out S8."""
    restore = with_threads(threads)
    train, pad, widths, joint_set = open_data(name, root, ["S1", "S5", "S6", "S7"], "body")
    test, _, _, _ = open_data(name, root, ["S8"], "body")
    ds = train.dataset(train.windows(left=pad, right=pad, chunk=1), flip="double", with_trajectory=False)
    tds = test.dataset(test.windows(left=pad, right=pad, chunk=1), flip=None, with_trajectory=False)
    tb = tds.get_batch(np.arange(len(tds)))
    j = get_joint_set(joint_set).num_joints
    torch.manual_seed(0)
    kw = dict(num_joints_in=j, in_features=2, num_joints_out=j, filter_widths=widths, dropout=0.25,
              channels=channels)
    init = TemporalModelOptimized1f(**kw).state_dict()
    res = {}
    # fp32 twice, with another dropout stream the second time: the run-to-run spread that a
    # bf16 - fp32 difference has to be judged against.
    for run, prec_name, seed in (("fp32", "fp32", 1), ("bf16", "bf16", 1), ("fp32b", "fp32", 2)):
        m = TemporalModelOptimized1f(**kw)
        m.load_state_dict(init)
        v = Variant(prec_name, m, "fused", prec_name, lambda idx: (lambda b: (b["kp2d"], b["pose3d"]))(ds.get_batch(idx)))
        torch.manual_seed(seed)  # same dropout stream for fp32 and bf16
        t0, curve = time.perf_counter(), []
        for e in range(epochs):
            for g in v.opt.param_groups:
                g["lr"] = 1e-3 * 0.95 ** e
            order = np.random.default_rng([0, e]).permutation(len(ds))
            m.train()
            for b0 in range(0, len(order) - batch + 1, batch):
                v.step(order[b0:b0 + batch])
            m.eval()
            with torch.no_grad():  # evaluation in float32, as the checkpoint is evaluated
                pred = m(tb["kp2d"]).numpy()[:, 0]
            curve.append(float(p_mpjpe(pred, tb["pose3d"].numpy()[:, 0]).mean() * 1000))
        res[run] = (curve, time.perf_counter() - t0)
        print(f"# accuracy: {run} done, final P-MPJPE {curve[-1]:.2f} mm", file=sys.stderr, flush=True)
    restore()
    (c32, s32), (c16, s16), (cb, _) = res["fp32"], res["bf16"], res["fp32b"]
    print(f"\n### Accuracy: {name} data, {channels} channels, batch {batch}, {epochs} epochs "
          f"({len(ds):,} windows/epoch, train S1 S5 S6 S7, test S8 {len(tds):,} frames), {threads} thread(s)\n")
    print("| epoch | P-MPJPE fp32 (mm) | P-MPJPE bf16 (mm) | bf16 - fp32 | fp32, other dropout seed | "
          "its difference to fp32 |")
    print("|---:|---:|---:|---:|---:|---:|")
    for e in sorted({0, epochs // 4, epochs // 2, epochs - 2, epochs - 1}):
        if 0 <= e < epochs:
            print(f"| {e + 1} | {c32[e]:.2f} | {c16[e]:.2f} | {c16[e] - c32[e]:+.2f} | {cb[e]:.2f} | "
                  f"{cb[e] - c32[e]:+.2f} |")
    print(f"\nTraining time: fp32 {s32:.0f} s, bf16 {s16:.0f} s (bf16 / fp32 speed {s32 / s16:.2f}x); "
          f"final difference {c16[-1] - c32[-1]:+.2f} mm (target: within 0.5 mm)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="he27", help="comma-separated: he27, h36m243 (default he27)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant and thread count (0 = skip the speed part)")
    p.add_argument("--batch", type=int, default=None, help="batch (default: the config's, 128 / 1024)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--compile", action="store_true", help="also time fp32 with torch.compile")
    p.add_argument("--data-batches", type=int, default=20, help="batches timed for the data-path comparison")
    p.add_argument("--acc-epochs", type=int, default=12, help="epochs of the accuracy check (0 = skip)")
    p.add_argument("--acc-channels", type=int, default=256, help="model width of the accuracy check")
    p.add_argument("--acc-batch", type=int, default=256, help="batch of the accuracy check")
    p.add_argument("--cache-dir", type=Path, default=None, help="where the synthetic caches go (reused)")
    a = p.parse_args(argv)
    threads = [int(t) for t in a.threads.split(",") if t]
    root = a.cache_dir or Path(tempfile.mkdtemp(prefix="bench_lifter_"))
    root.mkdir(parents=True, exist_ok=True)
    cmd = ' '.join(shlex.quote(x) for x in ['benchmarks/bench_lifter_train.py', *(argv or sys.argv[1:])])
    print(f"`{cmd}`, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n\n"
          f"Machine: {machine_line(torch.device('cpu'))}")
    for name in [c for c in a.configs.split(",") if c]:
        if a.steps:
            speed(name, root, threads, a.steps, a.batch, a.compile, a.data_batches)
        if a.acc_epochs:
            accuracy(name, root, a.acc_epochs, a.acc_channels, a.acc_batch, min(threads))
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
