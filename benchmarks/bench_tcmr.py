"""TCMR from caches: training steps/s, inference windows/s, fraction of step time reading data.

Builds synthetic DB files in the reference formats, imports them (float16 features), then
times ``train_tcmr``'s step loop pieces and eval-mode inference. Prints one markdown row.

    .venv/bin/python benchmarks/bench_tcmr.py --hidden 1024 --feat-dim 2048 --steps 10
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--feat-dim", type=int, default=2048, help="feature width (2048 = release)")
    p.add_argument("--hidden", type=int, default=1024, help="GRU hidden size (1024 = release)")
    p.add_argument("--layers", type=int, default=2, help="GRU layers (2 = release)")
    p.add_argument("--batch", type=int, default=32, help="windows per step (32 = release)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps")
    p.add_argument("--frames", type=int, default=3000, help="frames per synthetic dataset")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from poselift.datasets.importers.insta import import_insta_h5
    from poselift.datasets.importers.tcmr_db import import_tcmr_db
    from poselift.synthetic.smpl import make_synthetic_smpl
    from poselift.lifting.tcmr.data import MixedBatchSampler, TCMRWindowData, open_source, train_windows
    from poselift.lifting.tcmr.eval import PROTOCOLS, h36m_regressor, predict_source
    from poselift.lifting.tcmr.losses import TCMRLoss
    from poselift.synthetic.tcmr import write_3dpw_db, write_insta_h5
    from poselift.core.device import resolve_device
    from poselift.lifting.tcmr.train import StepBatches, TCMRConfig, _rep3, build_tcmr

    dev = resolve_device(a.device)
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
        model = build_tcmr(cfg).to(dev)
        srcs = [open_source(d, n, feat_dim=a.feat_dim) for n in ("insta_train", "3dpw_train")]
        data = [TCMRWindowData(s, train_windows(s, 1)) for s in srcs]
        batches = StepBatches(MixedBatchSampler([len(data[0])], [len(data[1])], a.batch), [data[0]], [data[1]])
        opt = torch.optim.Adam(model.parameters(), lr=5e-5)
        loss_fn = TCMRLoss()
        data_t = step_t = 0.0
        for step in range(a.steps + 1):
            t1 = time.perf_counter()
            b = batches[step]
            t2 = time.perf_counter()
            n2 = int(b["n_2d"])
            pred = model(b["features"].to(dev), is_train=True)
            kp = _rep3(b["kp_2d"].to(dev))
            t3d = {"kp_2d": kp[n2:], **{k: _rep3(b[k].to(dev)) for k in ("kp_3d", "theta", "w_3d", "w_smpl")}}
            loss, _ = loss_fn(pred, {"kp_2d": kp[:n2]}, t3d)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if step:  # first step warms up
                data_t += t2 - t1
                step_t += time.perf_counter() - t1
        val = open_source(d, "3dpw_val", feat_dim=a.feat_dim)
        reg = h36m_regressor(body, 6890)
        t4 = time.perf_counter()
        out = predict_source(model, val, PROTOCOLS["3dpw"], J_regressor=reg, device=dev,
                             batch_size=a.batch, pve=False)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        inf_s = time.perf_counter() - t4
        n_win = sum(len(v["joints"]) for v in out.values())
    print("| device | hidden | feat | batch | import frames/s | train steps/s | data fraction | "
          "inference windows/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {dev.type} | {a.hidden} | {a.feat_dim} | {a.batch} | {(per * 22) / import_s:.0f} | "
          f"{a.steps / step_t:.3f} | {data_t / step_t:.3f} | {n_win / inf_s:.1f} |")



if __name__ == "__main__":
    main()
