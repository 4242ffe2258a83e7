"""``poselift <stage> ...``: one entry point for every stage's command-line tool.

``poselift train lift ...`` is the same as ``poselift-train lift ...``, and so on.
"""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

STAGES = {
    "demo": ("poselift.demo.run", "run the built-in end-to-end demo"),
    "import": ("poselift.datasets.importers.cli", "reference data files -> caches"),
    "extract": ("poselift.extract.cli", "videos -> crops -> features / 2D keypoints -> caches"),
    "train": ("poselift.lifting.cli", "train lifters from caches"),
    "evaluate": ("poselift.lifting.evaluate_cli", "evaluate checkpoints or saved predictions"),
    "cache": ("poselift.datasets.cache.cli", "inspect, verify and finalise caches"),
    "infer": ("poselift.infer.cli", "video(s) -> detect, track, 2D, lift -> 3D, MP4, report.html"),
    "weights": ("poselift.zoo.cli", "published checkpoints by name: list, fetch, verify"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in STAGES:
        print("usage: poselift <stage> [options]   (poselift <stage> --help for each)\n\nstages:")
        for name, (_, help_) in STAGES.items():
            print(f"  {name:<10} {help_}")
        if args and args[0] not in ("-h", "--help"):
            print(f"\nposelift: unknown stage {args[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(STAGES[args[0]][0])
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
