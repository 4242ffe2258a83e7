"""TCMR from caches, in ONE run: training step rate before / after issue 14 (fused Adam, bf16
autocast), the share of a step spent in the SMPL body model versus the GRU encoder and the
regressor MLP, thread scaling, data fraction, and eval-mode inference windows/s.

Builds synthetic DB files in the reference formats, imports them (float16 features). The
variants train one shared model in lockstep on the same batches (A, B, C, A, B, C, ...), each
with its own optimizer, so load from other processes hits all alike:
  before     smplx's own skinning (per-vertex 4x4 bmm), torch's nn.Dropout and single-tensor
             Adam, float32 (poselift before issue 14);
  fp32       fused Adam, float32;
  bf16       fused Adam, ``precision: bf16`` (CPU autocast; SMPL stays float32).
SMPL share: the body model's forward + backward for the step's 3 x batch bodies, timed in
the same rounds, over the fp32 step time.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_tcmr.py --threads 1,2 --steps 4
"""
from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_line, matmul_peak_gflops, step_flops, with_threads  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--feat-dim", type=int, default=2048, help="feature width (2048 = release)")
    p.add_argument("--hidden", type=int, default=1024, help="GRU hidden size (1024 = release)")
    p.add_argument("--layers", type=int, default=2, help="GRU layers (2 = release)")
    p.add_argument("--batch", type=int, default=32, help="windows per step (32 = release)")
    p.add_argument("--steps", type=int, default=4, help="timed training steps per variant and thread count")
    p.add_argument("--frames", type=int, default=3000, help="frames per synthetic dataset")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    a = p.parse_args(argv)
    import smplx

    from poselift.core.optim import make_adam
    from poselift.core.precision import resolve_precision
    from poselift.datasets.importers.insta import import_insta_h5
    from poselift.datasets.importers.tcmr_db import import_tcmr_db
    from poselift.synthetic.smpl import make_synthetic_smpl
    from poselift.lifting.tcmr.data import MixedBatchSampler, TCMRWindowData, open_source, train_windows
    from poselift.lifting.tcmr.eval import PROTOCOLS, h36m_regressor, predict_source
    from poselift.lifting.tcmr.losses import TCMRLoss
    from poselift.synthetic.tcmr import write_3dpw_db, write_insta_h5
    from poselift.lifting.tcmr.train import StepBatches, TCMRConfig, _rep3, build_tcmr

    threads = [int(t) for t in a.threads.split(",") if t]
    cmd = " ".join(shlex.quote(x) for x in ["benchmarks/bench_tcmr.py", *(argv or sys.argv[1:])])
    print(f"`{cmd}`, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n\n"
          f"Machine: {machine_line(torch.device('cpu'))}\n")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        per = max(a.frames // 10, 32)
        t0 = time.perf_counter()
        import_tcmr_db(write_3dpw_db(d / "3dpw_train_db.pt", lengths=[per] * 10, feat_dim=a.feat_dim),
                       "3dpw", d)
        import_tcmr_db(write_3dpw_db(d / "3dpw_val_db.pt", lengths=[per] * 2, feat_dim=a.feat_dim,
                                     joints3d=14), "3dpw", d)
        import_insta_h5(write_insta_h5(d / "insta.h5", lengths=[per] * 10, feat_dim=a.feat_dim), d)
        import_s = time.perf_counter() - t0
        body = make_synthetic_smpl(d / "smpl")
        cfg = TCMRConfig(body_model_dir=str(body), feat_dim=a.feat_dim, hidden_size=a.hidden,
                         n_layers=a.layers)
        torch.manual_seed(0)
        model = build_tcmr(cfg).train()
        n_param = sum(q.numel() for q in model.parameters())
        srcs = [open_source(d, n, feat_dim=a.feat_dim) for n in ("insta_train", "3dpw_train")]
        data = [TCMRWindowData(s, train_windows(s, 1)) for s in srcs]
        batches = StepBatches(MixedBatchSampler([len(data[0])], [len(data[1])], a.batch), [data[0]], [data[1]])
        loss_fn = TCMRLoss()
        before = "before: smplx skinning, nn.Dropout, Adam loop, fp32"
        variants = {before: ("loop", "fp32"), "now: fast skinning, FastDropout, fused Adam, fp32": ("fused", "fp32"),
                    "now: fast skinning, FastDropout, fused Adam, bf16 autocast": ("fused", "bf16")}
        opts = {k: make_adam(model.parameters(), lr=5e-5, impl=v[0]) for k, v in variants.items()}
        precs = {k: resolve_precision(v[1], "cpu") for k, v in variants.items()}
        smpl = model.regressor.smpl

        def smplx_forward(betas: torch.Tensor, rotmat: torch.Tensor):  # the skinning before issue 14
            out = smplx.SMPL.forward(smpl, betas=betas, body_pose=rotmat[:, 1:],
                                     global_orient=rotmat[:, 0].unsqueeze(1), pose2rot=False)
            extra = torch.einsum("bik,ji->bjk", out.vertices, smpl.J_regressor_extra)
            return out.vertices, torch.cat([out.joints, extra], dim=1)[:, smpl.joint_map]

        reg = model.regressor
        fast_drops = (reg.drop1, reg.drop2)
        plain_drops = tuple(torch.nn.Dropout(m.p) for m in fast_drops)  # torch's bernoulli_ mask

        def step(name: str, b: dict) -> None:
            n2 = int(b["n_2d"])
            if name.startswith("before"):
                smpl.forward = smplx_forward  # instance attribute: this module only
                reg.drop1, reg.drop2 = plain_drops
            with precs[name].autocast():
                pred = model(b["features"], is_train=True)
            smpl.__dict__.pop("forward", None)
            reg.drop1, reg.drop2 = fast_drops
            pred = {k: pred[k].float() for k in ("kp_2d", "kp_3d", "theta")}
            kp = _rep3(b["kp_2d"])
            t3d = {"kp_2d": kp[n2:], **{k: _rep3(b[k]) for k in ("kp_3d", "theta", "w_3d", "w_smpl")}}
            loss, _ = loss_fn(pred, {"kp_2d": kp[:n2]}, t3d)
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()

        def smpl_step(n_bodies: int) -> None:
            shape = torch.zeros(n_bodies, 10, requires_grad=True)
            rot = torch.eye(3).expand(n_bodies, 24, 3, 3).clone().requires_grad_(True)
            verts, joints = smpl(shape, rot)
            (verts.sum() + joints.sum()).backward()

        print(f"Release-size TCMR ({n_param / 1e6:.1f} M parameters, {a.layers} GRU layers, hidden "
              f"{a.hidden}, features {a.feat_dim}), batch {a.batch} (3 x {a.batch} SMPL bodies per "
              f"step), synthetic SMPL-format body model ({smpl.v_template.shape[0]} vertices); {a.steps} "
              f"timed steps per variant and thread count; import {per * 22 / import_s:.0f} frames/s\n")
        print("SMPL share: the body model's forward + backward (fast skinning) over the variant's step "
              "time; for 'before' it is a lower bound (its own skinning is slower).\n")
        flops = step_flops(lambda: step("now: fast skinning, FastDropout, fused Adam, fp32", batches[0]))
        print(f"Step FLOPs (matmuls, forward + backward, torch's counter): {flops / 1e9:.1f} G; peaks: "
              f"best 2048^2 matmul over 2 s per thread count; the fraction is the step's achieved "
              f"GFLOP/s over the peak of its own dtype's units (fp32 for fp32, bf16 for bf16).\n")
        print("| threads | fp32 / bf16 peak GFLOP/s | variant | steps/s | s/step | vs before | achieved GFLOP/s "
              "| of peak | data fraction | SMPL fwd+bwd share | GRU + regressor + loss + Adam share |")
        print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for t in threads:
            restore = with_threads(t)
            p32 = matmul_peak_gflops(torch.float32, torch.device("cpu"), seconds=2.0)
            p16 = matmul_peak_gflops(torch.bfloat16, torch.device("cpu"), seconds=2.0)
            acc = {k: 0.0 for k in [*variants, "smpl", "data"]}
            for s in range(a.steps + 1):
                td = time.perf_counter()
                b = batches[s]
                data_s = time.perf_counter() - td
                t1 = time.perf_counter()
                smpl_step(3 * len(b["features"]))
                smpl_s = time.perf_counter() - t1
                for name in variants:
                    t1 = time.perf_counter()
                    step(name, b)
                    if s:  # the first round warms up
                        acc[name] += time.perf_counter() - t1
                if s:
                    acc["smpl"] += smpl_s
                    acc["data"] += data_s
            restore()
            base = acc[before]
            for name in variants:
                share = acc["smpl"] / acc[name]
                gf = flops * a.steps / acc[name] / 1e9
                peak = p16 if "bf16" in name else p32
                print(f"| {t} | {p32:.0f} / {p16:.0f} | {name} | {a.steps / acc[name]:.3f} | "
                      f"{acc[name] / a.steps:.2f} | {base / acc[name]:.2f}x | {gf:.1f} | {100 * gf / peak:.0f} % | "
                      f"{100 * acc['data'] / (acc['data'] + acc[name]):.1f} % | "
                      f"{100 * share:.0f} % | {100 * (1 - share):.0f} % |", flush=True)
        val = open_source(d, "3dpw_val", feat_dim=a.feat_dim)
        reg = h36m_regressor(body, 6890)
        rates = []
        for prec in ("fp32", "bf16"):
            t4 = time.perf_counter()
            with resolve_precision(prec, "cpu").autocast():
                out = predict_source(model, val, PROTOCOLS["3dpw"], J_regressor=reg, device="cpu",
                                     batch_size=a.batch, pve=False)
            rates.append(sum(len(v["joints"]) for v in out.values()) / (time.perf_counter() - t4))
        print(f"\nInference ({torch.get_num_threads()} threads): {rates[0]:.1f} windows/s fp32, "
              f"{rates[1]:.1f} windows/s bf16 autocast ({rates[1] / rates[0]:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
