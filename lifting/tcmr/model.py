"""TCMR and VIBE: temporal encoders over cached HMR features + the SPIN regressor.

Module and parameter names equal the reference checkpoints' ``gen_state_dict`` keys
(``encoder.gru_cur``, ``encoder.attention.attention.0`` ...), so loading is an identity map.

Shapes: features (N, T, D) with D = 2048 for HMR ResNet-50 features.
* TCMR predicts the middle frame (index T // 2) of a T = 16 window. In training mode it
  returns three predictions per window, [past-only, future-only, fused], as axis 1 of size 3.
* VIBE predicts every frame of the window.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from poselift.lifting.tcmr.smpl_model import SPINSMPL
from poselift.lifting.tcmr.spin_regressor import Regressor

__all__ = ["TemporalAttention", "TCMREncoder", "VIBEEncoder", "TCMR", "VIBE", "TCMR_MODELS",
           "check_features"]


def check_features(x: torch.Tensor, feat_dim: int, seq_len: int | None) -> None:
    """Raise ValueError with a clear message for a wrong rank, width, window length or NaN."""
    if x.dim() != 3:
        raise ValueError(f"expected features of shape (N, T, {feat_dim}), got {tuple(x.shape)}")
    if x.shape[-1] != feat_dim:
        raise ValueError(f"feature width mismatch: model expects D={feat_dim}, got "
                         f"{x.shape[-1]} (features from another backbone?)")
    if seq_len is not None and x.shape[1] != seq_len:
        raise ValueError(f"window length mismatch: model expects T={seq_len} frames, got "
                         f"{x.shape[1]} (pad short sequences to full windows)")
    if x.shape[1] == 0:
        raise ValueError("empty window (T=0)")
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        rows = torch.nonzero(bad.flatten(1).any(1)).flatten()[:5].tolist()
        raise ValueError(f"features contain NaN/inf ({int(bad.sum())} values; windows {rows})")


class TemporalAttention(nn.Module):
    """Scores over ``n_slots`` feature vectors: shared fc (D->256), flatten, 3-layer tanh MLP,
    softmax. (N, S, D) -> (N, S). The reference builds an unused ReLU; it has no weights."""

    def __init__(self, attention_size: int = 2048, n_slots: int = 3, hidden: int = 256) -> None:
        super().__init__()
        self.fc = nn.Linear(attention_size, hidden)
        self.attention = nn.Sequential(
            nn.Linear(hidden * n_slots, hidden), nn.Tanh(),
            nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, n_slots), nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x).reshape(x.shape[0], -1)
        return torch.softmax(self.attention(y), dim=-1)


class TCMREncoder(nn.Module):
    """Three GRUs over a (N, T, D) window -> [past, current, future] features + attention.

    ``gru_cur`` (bidirectional) sees all T frames and is read at T // 2; ``gru_bef`` sees
    frames 0 .. T//2 - 1, ``gru_aft`` frames T-1 down to T//2 + 1 (the middle frame is seen
    by neither). Each goes through ReLU + Linear to D.
    """

    def __init__(self, n_layers: int = 2, hidden_size: int = 1024, seq_len: int = 16,
                 feat_dim: int = 2048) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.mid_frame = seq_len // 2
        self.feat_dim = feat_dim
        self.gru_cur = nn.GRU(feat_dim, hidden_size, num_layers=n_layers, bidirectional=True)
        self.gru_bef = nn.GRU(feat_dim, hidden_size, num_layers=n_layers)
        self.gru_aft = nn.GRU(feat_dim, hidden_size, num_layers=n_layers)
        self.linear_cur = nn.Linear(hidden_size * 2, feat_dim)
        self.linear_bef = nn.Linear(hidden_size, feat_dim)
        self.linear_aft = nn.Linear(hidden_size, feat_dim)
        self.attention = TemporalAttention(attention_size=feat_dim, n_slots=3)

    def forward(self, x: torch.Tensor, is_train: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, T, D) -> (feature, scores (N, 3)); feature is (N, D) fused when not
        ``is_train``, else (N, 3, D) = [past-only, future-only, fused]."""
        xt = x.permute(1, 0, 2)  # the GRUs are time-major
        y_all, _ = self.gru_cur(xt)
        y_bef, _ = self.gru_bef(xt[: self.mid_frame])
        y_aft, _ = self.gru_aft(torch.flip(xt[self.mid_frame + 1:], dims=[0]))
        cur = self.linear_cur(F.relu(y_all[self.mid_frame]))
        bef = self.linear_bef(F.relu(y_bef[-1]))
        aft = self.linear_aft(F.relu(y_aft[-1]))
        slots = torch.stack([bef, cur, aft], dim=1)  # order [past, current, future]
        scores = self.attention(slots)
        fused = (slots * scores[:, :, None]).sum(dim=1)
        if not is_train:
            return fused, scores
        return torch.stack([bef, aft, fused], dim=1), scores


class VIBEEncoder(nn.Module):
    """One GRU over the window, per frame: (N, T, D) -> (N, T, D).

    With ``bidirectional`` or ``add_linear`` the GRU output goes through ReLU + Linear to D;
    ``use_residual`` adds the input features when the output width is D (VIBE release:
    2 layers, hidden 1024, add_linear, residual, unidirectional).
    """

    def __init__(self, n_layers: int = 2, hidden_size: int = 1024, add_linear: bool = True,
                 bidirectional: bool = False, use_residual: bool = True,
                 feat_dim: int = 2048) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.gru = nn.GRU(feat_dim, hidden_size, num_layers=n_layers,
                          bidirectional=bidirectional)
        self.linear: nn.Linear | None = None
        if bidirectional:
            self.linear = nn.Linear(hidden_size * 2, feat_dim)
        elif add_linear:
            self.linear = nn.Linear(hidden_size, feat_dim)
        self.use_residual = use_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        xt = x.permute(1, 0, 2)
        y, _ = self.gru(xt)
        if self.linear is not None:
            y = self.linear(F.relu(y).reshape(-1, y.shape[-1])).reshape(t, n, d)
        if self.use_residual and y.shape[-1] == d:
            y = y + xt
        return y.permute(1, 0, 2)


def _reshape_outputs(out: dict[str, torch.Tensor], lead: tuple[int, ...]
                     ) -> dict[str, torch.Tensor]:
    return {k: v.reshape(lead + tuple(v.shape[1:])) for k, v in out.items()}


class _SMPLRegressorModel(nn.Module):
    """Shared: regressor + optional evaluation regressor (17, V) buffer (not saved)."""

    feat_dim: int
    regressor: Regressor

    def _set_eval_regressor(self, J_regressor: torch.Tensor | None) -> None:
        reg = None if J_regressor is None else torch.as_tensor(J_regressor, dtype=torch.float32)
        self.register_buffer("eval_J_regressor", reg, persistent=False)

    def set_eval_regressor(self, J_regressor: torch.Tensor | None) -> None:
        """Use this (17, V) H36M regressor for kp_3d/kp_2d (14 joints) in eval mode."""
        self._set_eval_regressor(J_regressor)


class TCMR(_SMPLRegressorModel):
    """TCMR: ``TCMREncoder`` + ``Regressor``. Features (N, 16, D) -> middle-frame prediction.

    ``forward`` returns a dict: theta (N, 85) = [cam 3, axis-angle 72, betas 10], verts
    (N, V, 3), kp_3d (N, 49, 3), kp_2d (N, 49, 2), rotmat (N, 24, 3, 3), scores (N, 3)
    [past, current, future]. In training mode (``is_train``, default ``self.training``)
    every output except scores gets an axis of 3 after N: [past-only, future-only, fused].
    In eval, a (17, V) ``J_regressor`` (argument, else the one given to the constructor)
    turns kp_3d/kp_2d into the 14 LSP joints.
    """

    def __init__(self, smpl: SPINSMPL, n_layers: int = 2, hidden_size: int = 1024,
                 seq_len: int = 16, feat_dim: int = 2048, regressor_hidden: int = 1024,
                 init_pose: torch.Tensor | None = None, init_shape: torch.Tensor | None = None,
                 init_cam: torch.Tensor | None = None,
                 J_regressor: torch.Tensor | None = None) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.feat_dim = feat_dim
        self.encoder = TCMREncoder(n_layers, hidden_size, seq_len, feat_dim)
        self.regressor = Regressor(smpl, init_pose, init_shape, init_cam, feat_dim=feat_dim,
                                   hidden=regressor_hidden)
        self._set_eval_regressor(J_regressor)

    def forward(self, x: torch.Tensor, is_train: bool | None = None,
                J_regressor: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        check_features(x, self.feat_dim, self.seq_len)
        is_train = self.training if is_train is None else is_train
        n = x.shape[0]
        feature, scores = self.encoder(x, is_train=is_train)
        reg = None
        if not is_train:
            reg = J_regressor if J_regressor is not None else self.eval_J_regressor
        out = self.regressor(feature.reshape(-1, feature.shape[-1]), J_regressor=reg)
        out = _reshape_outputs(out, (n, 3) if is_train else (n,))
        out["scores"] = scores
        return out


class VIBE(_SMPLRegressorModel):
    """VIBE: ``VIBEEncoder`` + ``Regressor``, one prediction per frame.

    Features (N, T, D) -> theta (N, T, 85), verts (N, T, V, 3), kp_3d (N, T, 49|14, 3),
    kp_2d (N, T, 49|14, 2), rotmat (N, T, 24, 3, 3). A ``J_regressor`` argument is applied
    in any mode (as the reference does); the constructor's one only in eval mode.
    """

    def __init__(self, smpl: SPINSMPL, n_layers: int = 2, hidden_size: int = 1024,
                 add_linear: bool = True, bidirectional: bool = False,
                 use_residual: bool = True, feat_dim: int = 2048, regressor_hidden: int = 1024,
                 init_pose: torch.Tensor | None = None, init_shape: torch.Tensor | None = None,
                 init_cam: torch.Tensor | None = None,
                 J_regressor: torch.Tensor | None = None) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.encoder = VIBEEncoder(n_layers, hidden_size, add_linear, bidirectional,
                                   use_residual, feat_dim)
        self.regressor = Regressor(smpl, init_pose, init_shape, init_cam, feat_dim=feat_dim,
                                   hidden=regressor_hidden)
        self._set_eval_regressor(J_regressor)

    def forward(self, x: torch.Tensor, J_regressor: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        check_features(x, self.feat_dim, None)
        n, t = x.shape[:2]
        if J_regressor is None and not self.training:
            J_regressor = self.eval_J_regressor
        feature = self.encoder(x)
        out = self.regressor(feature.reshape(-1, feature.shape[-1]), J_regressor=J_regressor)
        return _reshape_outputs(out, (n, t))


TCMR_MODELS: dict[str, type[nn.Module]] = {"tcmr": TCMR, "vibe": VIBE}
