"""Whole-sequence inference for temporal-convolution lifters (VideoPose3D's evaluation).

Each sequence is edge-padded by (pad + causal_shift) frames on the left and
(pad - causal_shift) on the right and run through the valid-convolution model in one
pass, so the output has exactly one prediction per frame. Test-time augmentation runs
the horizontally flipped copy in the same batch, un-flips its output and averages.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["predict_sequence", "flip_joints"]


def flip_joints(x: np.ndarray | torch.Tensor, perm: np.ndarray) -> np.ndarray | torch.Tensor:
    """Mirror (..., J, C) joints: negate x and swap left/right (``perm`` is an involution)."""
    out = x[..., perm, :].clone() if isinstance(x, torch.Tensor) else x[..., perm, :].copy()
    out[..., 0] *= -1
    return out


@torch.inference_mode()
def predict_sequence(model: torch.nn.Module, kp2d: np.ndarray, *, pad: int, causal_shift: int = 0,
                     flip_in: np.ndarray | None = None, flip_out: np.ndarray | None = None,
                     device: str | torch.device = "cpu") -> np.ndarray:
    """Predict every frame of one sequence.

    Args:
        model: a ``TemporalModel`` in eval mode (valid convolutions, T_out = T_in - RF + 1).
        kp2d: (T, J_in, F) normalised 2D input.
        pad: (RF - 1) // 2; causal_shift: ``pad`` for causal models, else 0.
        flip_in / flip_out: left/right permutations of the input / output joint sets;
            both given -> flip test-time augmentation.
    Returns:
        (T, J_out, 3) float32.
    """
    x = np.pad(kp2d, ((pad + causal_shift, pad - causal_shift), (0, 0), (0, 0)), mode="edge")
    batch = [x]
    tta = flip_in is not None and flip_out is not None
    if tta:
        batch.append(flip_joints(x, flip_in))
    inp = torch.from_numpy(np.stack(batch).astype(np.float32)).to(device, non_blocking=True)
    out = model(inp)
    if tta:
        out = torch.stack([out[0], flip_joints(out[1], flip_out)]).mean(0, keepdim=True)
    pred = out[0].float().cpu().numpy()
    if pred.shape[0] != kp2d.shape[0]:
        raise RuntimeError(f"model returned {pred.shape[0]} frames for a {kp2d.shape[0]}-frame "
                           f"sequence: pad {pad} does not match its receptive field")
    return pred
