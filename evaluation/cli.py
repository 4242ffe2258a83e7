"""``poselift-evaluate``: metrics, grouped report and plots from one predictions file.

Input: an ``.npz`` (loaded with ``allow_pickle=False``) holding flat per-frame arrays
plus a per-sequence table, the same offset/length layout as the caches:

    pred (N, J, 3) float, gt (N, J, 3) float, lengths (S,) int, seq_ids (S,) str,
    subjects (S,) str, actions (S,) str;
    optional: mask (N,) or (N, J) bool, cameras (S,) str, fps (S,) float,
    joint_names (J,) str, verts and gt_verts (N, V, 3) float.

Outputs in ``--out``: report.json, report.md, protocol.md/.json (VideoPose3D) and,
with ``--plots``, PNGs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from . import metrics as M
from .protocols import tcmr_summary, videopose3d_protocol
from .records import SequenceRecord
from .report import Report, evaluate_sequences

REQUIRED = ("pred", "gt", "lengths", "seq_ids", "subjects", "actions")
OPTIONAL = ("mask", "cameras", "fps", "joint_names", "verts", "gt_verts")


def load_records(path: str | Path,
                 center: Sequence[int] | None = None) -> list[SequenceRecord]:
    """Read the npz layout above into records; errors name the file and the key.

    center: joint indices to centre both pred and gt on (mean), e.g. [0] for the pelvis.
    """
    path = Path(path)
    with np.load(path, allow_pickle=False) as data:
        keys = set(data.files)
        for k in REQUIRED:
            if k not in keys:
                raise KeyError(f"{path}: missing key {k!r}")
        extra = sorted(keys - set(REQUIRED) - set(OPTIONAL))
        if extra:
            raise KeyError(f"{path}: unknown key {extra[0]!r}")
        try:
            arr = {k: data[k] for k in keys}
        except ValueError as e:             # object arrays would need unpickling
            raise ValueError(f"{path}: refusing to unpickle object arrays ({e})") from None
    lengths = arr["lengths"].astype(np.int64)
    s = len(lengths)
    for k in ("seq_ids", "subjects", "actions", "cameras", "fps"):
        if k in arr and arr[k].shape != (s,):
            raise ValueError(f"{path}: key {k!r} has shape {arr[k].shape}, expected ({s},)")
    n = int(lengths.sum())
    split = {}
    for k in ("pred", "gt", "mask", "verts", "gt_verts"):
        if k in arr:
            if arr[k].shape[0] != n:
                raise ValueError(f"{path}: key {k!r} has {arr[k].shape[0]} frames, "
                                 f"but 'lengths' sums to {n}")
            split[k] = M.split_sequences(arr[k], lengths)
    names = [str(x) for x in arr["joint_names"]] if "joint_names" in arr else None
    records = []
    for i in range(s):
        pred, gt = split["pred"][i], split["gt"][i]
        verts = split["verts"][i] if "verts" in split else None
        if center is not None:
            pred, gt = M.center_on(pred, center), M.center_on(gt, center)
        records.append(SequenceRecord(
            seq_id=str(arr["seq_ids"][i]), subject=str(arr["subjects"][i]),
            action=str(arr["actions"][i]), pred=pred, gt=gt,
            camera=str(arr["cameras"][i]) if "cameras" in arr else None,
            fps=float(arr["fps"][i]) if "fps" in arr else None,
            mask=split["mask"][i] if "mask" in split else None,
            verts=verts, gt_verts=split["gt_verts"][i] if "gt_verts" in split else None,
            joint_names=names))
    return records


def write_outputs(report: Report, out: Path, by_subject: bool = False,
                  actions: Sequence[str] | None = None, plots: bool = False) -> dict[str, Path]:
    """Write report.json/.md, protocol.json/.md and optional plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"report_json": report.write_json(out / "report.json"),
             "report_md": report.write_markdown(out / "report.md")}
    proto = videopose3d_protocol(report, by_subject=by_subject, actions=actions)
    (out / "protocol.md").write_text(proto.to_markdown())
    d = proto.to_dict()
    d["tcmr"] = tcmr_summary(report)
    (out / "protocol.json").write_text(json.dumps(d, indent=2))
    files.update(protocol_md=out / "protocol.md", protocol_json=out / "protocol.json")
    if plots:
        from .plots import write_plots     # matplotlib only when asked for
        files.update(write_plots(report, out / "plots"))
    return files


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``poselift-evaluate predictions``."""
    ap.add_argument("predictions", type=Path,
                    help="npz with pred and gt (N, J, 3), lengths, seq_ids, subjects, actions per "
                         "sequence; optional mask, cameras, fps, joint_names, verts, gt_verts")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--scale", type=float, default=1000.0,
                    help="multiplier to the report unit (1000: metres -> mm)")
    ap.add_argument("--unit", default="mm", help="unit label of the scaled numbers in the report (default mm)")
    ap.add_argument("--center", default=None,
                    help="comma-separated joint indices to centre pred and gt on, e.g. 0")
    ap.add_argument("--by-subject", action="store_true", help="VideoPose3D tables per subject")
    ap.add_argument("--actions", nargs="*", default=None, help="action name prefixes to keep")
    ap.add_argument("--plots", action="store_true", help="also write PNG plots")


def run(args: argparse.Namespace) -> int:
    """Report from the predictions file named in ``args``; prints the protocol table."""
    center = None if args.center is None else [int(x) for x in args.center.split(",")]
    report = evaluate_sequences(load_records(args.predictions, center), args.scale, args.unit)
    write_outputs(report, args.out, args.by_subject, args.actions, args.plots)
    proto = videopose3d_protocol(report, by_subject=args.by_subject, actions=args.actions)
    print(proto.to_markdown())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="poselift-evaluate predictions", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
