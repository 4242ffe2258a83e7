"""Config dataclasses for lifter training, with YAML overrides.

Defaults follow VideoPose3D's ``common/arguments.py``; YAML files in ``configs/`` hold
the published recipes as overrides; ``--set key=value`` on the command line overrides
both. The resolved config is written next to every output and into every checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["LiftConfig", "load_config", "apply_overrides", "config_to_dict", "parse_set_args",
           "config_from_cli"]

T = TypeVar("T")


@dataclass
class LiftConfig:
    """Temporal-convolution lifter training (2D keypoints -> 3D joints)."""

    # data: a ground-truth cache and a 2D keypoint cache joined by sequence id
    gt_cache: str = ""
    keypoints_cache: str = ""
    train_subjects: list[str] = field(default_factory=lambda: ["S1", "S5", "S6", "S7", "S8"])
    test_subjects: list[str] = field(default_factory=lambda: ["S9", "S11"])
    actions: list[str] = field(default_factory=list)       # name-prefix filter; empty = all
    # expectations checked against the cache headers; empty = accept what the caches say
    dataset: str = ""                                       # e.g. h36m, humaneva15
    joints_in: str = ""                                     # 2D joint set, e.g. h36m17, coco17
    joints_out: str = ""                                    # 3D joint set
    subset: float = 1.0                                     # fraction of training frames
    downsample: int = 1                                     # keep every n-th frame
    # model (VideoPose3D TemporalModel)
    architecture: list[int] = field(default_factory=lambda: [3, 3, 3])
    channels: int = 1024
    dropout: float = 0.25
    causal: bool = False
    dense: bool = False
    trajectory: bool = False                                # also train the root-trajectory model
    # optimisation (Adam with amsgrad, per-epoch lr decay, BN momentum 0.1 -> 0.001)
    epochs: int = 60
    batch_size: int = 1024                                  # output frames per batch
    chunk: int = 1                                          # output frames per window (--stride)
    lr: float = 1e-3
    lr_decay: float = 0.95
    bn_momentum_start: float = 0.1
    bn_momentum_end: float = 0.001
    flip_train: bool = True
    flip_test: bool = True
    # semi-supervision (Human3.6M only: needs camera intrinsics; needs trajectory: true)
    unlabeled_subjects: list[str] = field(default_factory=list)
    unlabeled_cache: str = ""                               # 2D cache of those; "" = keypoints_cache
    seed_unlabeled: int = 4321                              # the unlabeled stream's own seed
    warmup: int = 1
    linear_projection: bool = False
    bone_length_term: bool = True
    projection_term: bool = True
    # run
    seed: int = 1234
    device: str = "auto"                                    # auto | cpu | cuda | cuda:N
    num_threads: int = 0                                    # 0 = torch default
    eval_every: int = 1                                     # epochs between test evaluations (0 = off)
    checkpoint_every: int = 10
    by_subject: bool = False                                # report per test subject (HumanEva)
    out_dir: str = "runs/lift"
    progress: bool = True


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _coerce(value: Any, like: Any, key: str) -> Any:
    if isinstance(like, bool):
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"config key {key!r}: expected a boolean, got {value!r}")
        return bool(value)
    if isinstance(like, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        inner = type(like[0]) if like else None
        if inner not in (int, float):
            return list(value)
        try:
            return [inner(v) for v in value]
        except (TypeError, ValueError):
            raise ValueError(f"config key {key!r}: expected a comma-separated list of "
                             f"{inner.__name__}, got {value!r}") from None
    if isinstance(like, (int, float)) and isinstance(value, str):
        try:
            return type(like)(value)
        except ValueError:
            raise ValueError(f"config key {key!r}: expected {type(like).__name__}, got {value!r}") from None
    if isinstance(like, float) and isinstance(value, int):
        return float(value)
    return value


def apply_overrides(cfg: T, overrides: dict[str, Any], source: str = "overrides") -> T:
    """Return a copy of ``cfg`` with ``overrides`` applied; unknown keys are errors."""
    names = {f.name: f for f in dataclasses.fields(cfg)}
    changes = {}
    for k, v in overrides.items():
        key = k.replace("-", "_")
        if key not in names:
            raise KeyError(f"{source}: unknown config key {k!r}; known keys: {sorted(names)}")
        changes[key] = _coerce(v, getattr(cfg, key), key)
    return dataclasses.replace(cfg, **changes)


def parse_set_args(items: list[str] | None) -> dict[str, str]:
    """``["epochs=3", "architecture=3,3"]`` -> dict (values parsed later by type)."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"--set expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> T:
    """Defaults of ``cls``, then the YAML file (if any), then ``overrides``."""
    cfg = cls()
    if path:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of config keys at the top level")
        cfg = apply_overrides(cfg, data, source=str(path))
    if overrides:
        cfg = apply_overrides(cfg, overrides, source="--set")
    return cfg


def dump_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (and keep JSON-compatible types)."""
    Path(path).write_text(yaml.safe_dump(json.loads(json.dumps(config_to_dict(cfg))), sort_keys=False))


def config_from_cli(cls: type[T], path: str | None, set_args: list[str] | None,
                    flags: dict[str, Any], print_config: bool = False) -> T | None:
    """The training commands' config: defaults, ``--config`` YAML, ``--set`` items, then the
    path flags that were given (``flags``: config key -> flag value or None). With
    ``print_config`` the resolved config is printed as JSON and None returned."""
    over: dict[str, Any] = parse_set_args(set_args)
    over.update({k: v for k, v in flags.items() if v})
    cfg = load_config(cls, path, over)
    if print_config:
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
        return None
    return cfg
