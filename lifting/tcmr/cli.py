"""Command-line front ends for TCMR: ``poselift-train tcmr`` and ``poselift-evaluate tcmr``.

Importing the reference DB files into caches is ``poselift.datasets.importers.tcmr_import_cli``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from poselift.core.checkpoints import add_trust_flag

from ..config import config_from_cli

__all__ = ["add_train_arguments", "run_train", "add_eval_arguments", "run_eval", "parse_frames"]


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML of TCMRConfig overrides (e.g. configs/tcmr/table4_3dpw.yaml)")
    p.add_argument("--cache-dir", help="folder of imported caches (<name>_features.h5, <name>_gt.h5)")
    p.add_argument("--body-model-dir", help="SMPL_NEUTRAL.{pkl,npz}, J_regressor_extra.npy, "
                                            "J_regressor_h36m.npy, smpl_mean_params.npz")
    p.add_argument("--out-dir", help="output folder (config.yaml, last.pt, best.pt, summary.json)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any TCMRConfig field, repeatable (e.g. --set epochs=45)")
    p.add_argument("--init", help="start weights: a released TCMR .pth.tar, a poselift TCMR checkpoint or a "
                                  "zoo name; loaded strictly into the configured architecture, fresh "
                                  "optimizer (overrides init)")
    p.add_argument("--no-resume", action="store_true", help="ignore OUT_DIR/last.pt")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run_train(a: argparse.Namespace) -> int:
    from .train import TCMRConfig, train_tcmr

    cfg = config_from_cli(TCMRConfig, a.config, a.set, {"cache_dir": a.cache_dir, "body_model_dir": a.body_model_dir,
                                                        "out_dir": a.out_dir, "init": a.init}, a.print_config)
    if cfg is None:
        return 0
    summary = train_tcmr(cfg, resume=not a.no_resume)
    print(f"best: {summary['best']} (val PA-MPJPE {summary['best_val_pa_mpjpe_mm']:.1f} mm)")
    return 0


def parse_frames(text: str) -> slice:
    """'start:stop[:step]' or a single frame index -> slice."""
    parts = [int(x) if x else None for x in text.split(":")]
    if len(parts) == 1:
        return slice(parts[0], parts[0] + 1)
    if len(parts) > 3:
        raise ValueError(f"--mesh-frames expects start:stop[:step], got {text!r}")
    return slice(*parts)


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "--weights", dest="checkpoint", required=True,
                   help="poselift TCMR checkpoint (best.pt / last.pt), a released TCMR/VIBE .pth.tar, "
                   "or a zoo name (tcmr-demo, vibe-wo-3dpw; see `poselift weights list`)")
    p.add_argument("--body-model-dir", required=True, help="SMPL files (see poselift-train tcmr)")
    p.add_argument("--cache-dir", required=True, help="folder with <source>_features.h5 and <source>_gt.h5")
    p.add_argument("--source", required=True, help="cache name prefix, e.g. 3dpw_test")
    p.add_argument("--protocol", required=True, choices=("3dpw", "mpii3d", "h36m"),
                   help="evaluation protocol: joint set, centring and valid-frame mask of that dataset")
    p.add_argument("--out", required=True, help="output folder for report.json/.md, summary.json, plots")
    p.add_argument("--match-vibe", action="store_true",
                   help="evaluate VIBE's frame set (non-overlapping 16-frame chunks) instead of all valid frames")
    p.add_argument("--edge-pad", action="store_true",
                   help="border windows by edge replication instead of TCMR's 16 copies of the target frame")
    p.add_argument("--batch-size", type=int, default=32, help="windows per forward pass (default 32)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto"],
                   help="forward precision of the GRUs and regressor (default fp32; SMPL and metrics "
                        "stay float32); recorded in report.json")
    p.add_argument("--export-meshes", default="", help="comma-separated sequence ids to export meshes for")
    p.add_argument("--mesh-frames", default="0:1000000:30", help="frames to export, start:stop[:step]")
    p.add_argument("--mesh-format", choices=("obj", "ply"), default="obj", help="file format of exported meshes")
    add_trust_flag(p, "a released checkpoint")


def run_eval(a: argparse.Namespace) -> int:
    import numpy as np

    from poselift.datasets.joints import LSP14
    from poselift.evaluation.meshes import export_meshes, render_snapshot

    from poselift.core.device import resolve_device

    from .data import open_source
    from .eval import (PROTOCOLS, evaluate_source, h36m_regressor, load_tcmr_any,
                       write_tcmr_report)

    dev = resolve_device(a.device)
    model, kind = load_tcmr_any(a.checkpoint, a.body_model_dir, device=dev,
                                trust_pickle=a.trust_checkpoint)
    src = open_source(a.cache_dir, a.source, feat_dim=model.feat_dim)
    reg = (h36m_regressor(a.body_model_dir, model.regressor.smpl.v_template.shape[0])
           if PROTOCOLS[a.protocol].h36m_regressor else None)
    export = {}
    sl = parse_frames(a.mesh_frames)
    for sid in [s for s in a.export_meshes.split(",") if s]:
        if sid not in src.ids:
            raise KeyError(f"--export-meshes: sequence {sid!r} is not in {src.labels.path}")
        export[sid] = set(range(*sl.indices(src.labels.info(sid).n_frames)))
    report, info, preds = evaluate_source(model, src, a.protocol, J_regressor=reg, device=dev,
                                          batch_size=a.batch_size, match_vibe=a.match_vibe,
                                          pad="edge" if a.edge_pad else "repeat_target",
                                          export=export or None, precision=a.precision)
    info["checkpoint"] = {"path": str(a.checkpoint), **kind}
    paths = write_tcmr_report(report, info, a.out)
    faces = model.regressor.smpl.faces.astype(np.int64)
    bones = LSP14.bones() if PROTOCOLS[a.protocol].h36m_regressor else []
    for sid in export:
        if "verts" not in preds.get(sid, {}):
            continue
        d = Path(a.out) / "meshes" / sid.replace("/", "_")
        fr = preds[sid]["verts_frames"]
        export_meshes(d, preds[sid]["verts"], faces, fr, a.mesh_format)
        joints = preds[sid]["joints"][fr[0]] if bones else None
        render_snapshot(d / f"snapshot_{int(fr[0]):06d}.png", preds[sid]["verts"][0], faces,
                        joints=joints, bones=bones)
        paths[f"meshes_{sid}"] = str(d)
    print(Path(paths["markdown"]).read_text().split("\n## ")[0])
    for k, v in paths.items():
        print(f"{k:<22} {v}")
    return 0
