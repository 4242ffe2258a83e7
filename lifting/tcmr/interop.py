"""Load released TCMR / VIBE ``.pth.tar`` checkpoints into ``poselift.lifting.tcmr.model`` models.

The files hold ``{'epoch', 'gen_state_dict', 'performance', 'gen_optimizer',
'disc_motion_state_dict', 'disc_motion_optimizer'}``; ``performance`` is a numpy float64, so
``torch.load(weights_only=True)`` needs exactly the numpy globals of a pickled scalar. Those
are allow-listed here (under their numpy-1 and numpy-2 module names); anything else is
refused naming the file unless the caller opts in with ``trust_pickle=True``.

The architecture is read from the parameter shapes; ``regressor.smpl.*`` (SMPL buffers and
the reference's per-batch parameters) is dropped and SMPL is rebuilt from the body-model
folder; every other key must match the model exactly (name and shape).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn

from poselift.core.checkpoints import CheckpointError, load_checkpoint, load_strict, unwrap_state_dict
from poselift.lifting.tcmr.smpl_model import build_spin_smpl, load_extra_regressor
from poselift.lifting.tcmr.model import TCMR, VIBE
from poselift.zoo import resolve_weights

__all__ = ["CheckpointError", "TCMRCheckpointConfig", "read_tcmr_checkpoint",
           "infer_tcmr_config", "load_tcmr_state_dict", "load_tcmr", "SMPL_PREFIX"]

SMPL_PREFIX = "regressor.smpl."


def read_tcmr_checkpoint(path: str | Path, *, trust_pickle: bool = False,
                         map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """torch.load a TCMR/VIBE checkpoint safely; returns the top-level dict.

    A bare state dict (no ``gen_state_dict``) is wrapped as ``{'gen_state_dict': sd}``.
    """
    path = Path(path)
    # numpy float64 ``performance`` and friends are on the shared allow-list
    ckpt = load_checkpoint(path, trust=trust_pickle, map_location=map_location)
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path}: expected a dict, got {type(ckpt).__name__}")
    if "gen_state_dict" not in ckpt:
        if all(torch.is_tensor(v) for v in ckpt.values()):
            return {"gen_state_dict": dict(ckpt)}
        raise CheckpointError(f"{path}: missing key 'gen_state_dict' (keys: {sorted(ckpt)})")
    return dict(ckpt)


@dataclass(frozen=True)
class TCMRCheckpointConfig:
    """Architecture read from a ``gen_state_dict``; ``kwargs`` go to the model constructor."""

    model: str  # 'tcmr' or 'vibe'
    kwargs: dict[str, Any] = field(default_factory=dict)


def _shape(sd: Mapping[str, torch.Tensor], key: str, path: Path) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"{path}: missing key {key!r}")
    return tuple(sd[key].shape)


def infer_tcmr_config(sd: Mapping[str, torch.Tensor], path: str | Path = "<state dict>",
                      *, vibe_use_residual: bool = True) -> TCMRCheckpointConfig:
    """Detect TCMR vs VIBE and read n_layers, hidden size, feature width, VIBE's
    bidirectional/add_linear from the shapes. VIBE's residual flag leaves no trace in the
    weights; the release value (True) is the default."""
    path = Path(path)
    reg_hidden, reg_in = _shape(sd, "regressor.fc1.weight", path)
    if "encoder.gru_cur.weight_ih_l0" in sd:
        name, gru = "tcmr", "encoder.gru_cur"
    elif "encoder.gru.weight_ih_l0" in sd:
        name, gru = "vibe", "encoder.gru"
    else:
        raise CheckpointError(f"{path}: neither a TCMR (encoder.gru_cur.*) nor a VIBE "
                              "(encoder.gru.*) state dict")
    three_h, feat_dim = _shape(sd, f"{gru}.weight_ih_l0", path)
    hidden = three_h // 3
    n_layers = 0
    while f"{gru}.weight_ih_l{n_layers}" in sd:
        n_layers += 1
    if reg_in != feat_dim + 157:
        raise CheckpointError(f"{path}: key 'regressor.fc1.weight' has input width {reg_in}, "
                              f"expected feature width {feat_dim} + 157")
    kwargs: dict[str, Any] = dict(n_layers=n_layers, hidden_size=hidden, feat_dim=feat_dim,
                                  regressor_hidden=reg_hidden)
    if name == "vibe":
        bidirectional = f"{gru}.weight_ih_l0_reverse" in sd
        kwargs.update(bidirectional=bidirectional,
                      add_linear="encoder.linear.weight" in sd and not bidirectional,
                      use_residual=vibe_use_residual)
    return TCMRCheckpointConfig(name, kwargs)


def load_tcmr_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor],
                         path: str | Path = "<state dict>") -> None:
    """Strict load of ``sd`` minus ``regressor.smpl.*`` into ``model`` (whose SMPL stays).

    A missing, leftover or misshaped key raises ``CheckpointError`` naming key and file.
    """
    given = {k: v for k, v in unwrap_state_dict(sd, str(path), wrappers=()).items()
             if not k.startswith(SMPL_PREFIX)}
    load_strict(model, given, str(path), keep_model=(SMPL_PREFIX,))


def load_tcmr(path: str | Path, body_model_dir: str | Path, *,
              J_regressor: None | str | Path | np.ndarray | torch.Tensor = None,
              trust_pickle: bool = False, map_location: str | torch.device = "cpu",
              vibe_use_residual: bool = True, seq_len: int = 16) -> nn.Module:
    """Build TCMR or VIBE from a released checkpoint; returns the model in eval mode.

    Args:
        path: ``.pth.tar`` (``gen_state_dict`` inside), a bare state dict file, or a zoo name.
        body_model_dir: holds ``SMPL_NEUTRAL.{npz,pkl}`` and ``J_regressor_extra.npy``.
        J_regressor: None (49 SPIN joints), ``'h36m'`` (``J_regressor_h36m.npy`` from
            ``body_model_dir``), a ``.npy`` path or a (17, V) array: eval outputs then carry
            the 14 LSP joints.
        trust_pickle: allow full unpickling (code execution!) for files you trust.
        map_location: where tensors are loaded; the model is moved there too.
        vibe_use_residual: VIBE's residual flag (not recorded in the weights).
        seq_len: TCMR window length (16 in every release).
    """
    path = resolve_weights(path)  # a zoo name ("tcmr-demo", "vibe-wo-3dpw") or a path
    ckpt = read_tcmr_checkpoint(path, trust_pickle=trust_pickle, map_location=map_location)
    sd = unwrap_state_dict(ckpt["gen_state_dict"], str(path), wrappers=())
    cfg = infer_tcmr_config(sd, path, vibe_use_residual=vibe_use_residual)
    smpl = build_spin_smpl(body_model_dir)
    n_verts = smpl.v_template.shape[0]
    reg = None
    if isinstance(J_regressor, str) and J_regressor == "h36m":
        reg = load_extra_regressor(body_model_dir, "J_regressor_h36m.npy", 17, n_verts)
    elif isinstance(J_regressor, (str, Path)):
        p = Path(J_regressor)
        reg = load_extra_regressor(p.parent, p.name, 17, n_verts)
    elif J_regressor is not None:
        reg = np.asarray(J_regressor, dtype=np.float32)
        if reg.shape != (17, n_verts):
            raise ValueError(f"J_regressor has shape {reg.shape}, expected (17, {n_verts})")
    reg_t = None if reg is None else torch.from_numpy(np.ascontiguousarray(reg))
    if cfg.model == "tcmr":
        model: nn.Module = TCMR(smpl, seq_len=seq_len, J_regressor=reg_t, **cfg.kwargs)
    else:
        model = VIBE(smpl, J_regressor=reg_t, **cfg.kwargs)
    load_tcmr_state_dict(model, sd, path)
    return model.to(map_location).eval()
