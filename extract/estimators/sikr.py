"""SIKR integral keypoint regression (AlphaPose ``NORM_TYPE: sigmoid``): decode, flip test, loss.

Conventions (all reproduce AlphaPose's numerics):

* Normalisation is two-step: ``p = sigmoid(logit)``, then ``p / sum(p)`` over each H*W map.
  The per-joint confidence is ``max(p)`` taken *before* the division.
* Coordinates are the expectations of the x / y marginals with cell index = cell centre
  (no +0.5), stored normalised as ``c / W - 0.5`` and ``c / H - 0.5``; targets use the same
  convention (crop pixel / crop size - 0.5).
* Back to the image: isotropic scale ``box_w / W`` around the box centre,
  ``x = cx + (c_x - W/2) * box_w / W``, ``y = cy + (c_y - H/2) * box_w / W``
  (``heatmap_to_coord_simple_regress`` through ``get_affine_transform(inv=1)``). The box is
  the crop box (detector box expanded 1.25x and aspect-corrected), so ``box_w/W == box_h/H``.
* Training uses a symmetric surrogate gradient for the index weights (``AMPLITUDE = 2``),
  :class:`SymmetricIntegral`.
* Flip test averages RAW logits of the original map and of the flipped-back map of the
  mirrored crop, then decodes. The flip-back shift is a *cloned* one-column shift
  (``out[..., j] = flipped[..., j-1]`` for j >= 1, column 0 kept). AlphaPose writes the
  shift in place with overlapping source and destination; with current PyTorch that
  silently corrupts parts of the map in a way that depends on vectorised-copy internals,
  so it is not reproducible and not offered here.

Shapes: N crops (persons), K joints, H x W map (64 x 48 for FastPose).
"""
from __future__ import annotations

from typing import Callable, ContextManager, Sequence

import numpy as np
import torch
from torch import nn

from poselift.datasets.joints import COCO17, HALPE26, HALPE136

__all__ = [
    "AMPLITUDE", "SymmetricIntegral", "sikr_integral", "sikr_decode", "crop_to_image",
    "flip_heatmap_back", "flip_test_logits", "FLIP_PAIRS", "flip_pairs_for", "HALPE136_FLIP_PAIRS",
    "sikr_targets", "sikr_l1_loss", "BODY_WEIGHTED_PREFIX",
]

AMPLITUDE = 2.0

# Halpe full-body 136-point left/right pairs (AlphaPose's halpe_136 order) live with the joint set.
HALPE136_FLIP_PAIRS: tuple[tuple[int, int], ...] = tuple(zip(HALPE136.left, HALPE136.right))

FLIP_PAIRS: dict[str, tuple[tuple[int, int], ...]] = {
    "coco17": tuple(zip(COCO17.left, COCO17.right)),
    "halpe26": tuple(zip(HALPE26.left, HALPE26.right)),
    "halpe136": HALPE136_FLIP_PAIRS,
}

# Keypoint count -> number of leading "body" joints that get 2x loss weight (AlphaPose
# ``_integral_target_generator``); other layouts are unweighted.
BODY_WEIGHTED_PREFIX: dict[int, int] = {136: 26, 133: 23, 68: 26}


def flip_pairs_for(num_joints: int) -> tuple[tuple[int, int], ...]:
    """Left/right pairs for the 17 (COCO), 26 (Halpe-26) or 136 (Halpe-136) keypoint layouts."""
    by_k = {17: "coco17", 26: "halpe26", 136: "halpe136"}
    if num_joints not in by_k:
        raise ValueError(f"no flip pairs known for {num_joints} keypoints (known: {sorted(by_k)})")
    return FLIP_PAIRS[by_k[num_joints]]


class SymmetricIntegral(torch.autograd.Function):
    """``x * arange(L)`` on the last axis of (N, K, L) marginals, with AlphaPose's surrogate backward.

    Forward equals plain autograd. Backward replaces the index weight ``i`` by ``-A`` for
    ``i < c`` and ``+A`` for ``i >= c`` (``c`` = the current coordinate ``sum_i x_i * i`` in
    cell units), and by ``+A`` everywhere when ``c > L``.
    """

    @staticmethod
    def forward(ctx, marginal: torch.Tensor,  # type: ignore[override]
                amplitude: float = AMPLITUDE) -> torch.Tensor:
        index = torch.arange(marginal.shape[-1], dtype=marginal.dtype, device=marginal.device)
        out = marginal * index
        ctx.save_for_backward(index, out)
        ctx.amplitude = float(amplitude)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        index, out = ctx.saved_tensors
        length = out.shape[-1]
        coord = out.sum(dim=-1, keepdim=True)
        sign = torch.where(index < coord, -1.0, 1.0).to(grad_out.dtype)
        sign = torch.where(coord > length, torch.ones_like(sign), sign)
        return grad_out * (sign * ctx.amplitude), None


def _plain_integral(marginal: torch.Tensor) -> torch.Tensor:
    return marginal * torch.arange(marginal.shape[-1], dtype=marginal.dtype, device=marginal.device)


def sikr_integral(logits: torch.Tensor, symmetric_grad: bool = False, amplitude: float = AMPLITUDE
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, H, W) logits -> (coords (N, K, 2) normalised ``c/W - 0.5, c/H - 0.5``, conf (N, K, 1)).

    ``symmetric_grad`` switches the index weighting to :class:`SymmetricIntegral` (training).
    """
    if logits.dim() != 4:
        raise ValueError(f"sikr_integral expects (N, K, H, W) logits, got shape {tuple(logits.shape)}")
    n, k, h, w = logits.shape
    prob = logits.reshape(n, k, h * w).sigmoid()
    conf = prob.max(dim=2, keepdim=True).values
    prob = (prob / prob.sum(dim=2, keepdim=True)).reshape(n, k, h, w)
    if symmetric_grad:
        def integral(m: torch.Tensor) -> torch.Tensor:
            return SymmetricIntegral.apply(m, amplitude)
    else:
        integral = _plain_integral
    cx = integral(prob.sum(dim=2)).sum(dim=2, keepdim=True) / float(w) - 0.5
    cy = integral(prob.sum(dim=3)).sum(dim=2, keepdim=True) / float(h) - 0.5
    return torch.cat((cx, cy), dim=2), conf.float()


def crop_to_image(cells: np.ndarray, boxes: np.ndarray, hm_size: tuple[int, int]) -> np.ndarray:
    """Map (N, K, 2) heatmap-cell coordinates to image pixels through (N, 4) xyxy crop boxes.

    Isotropic scale ``box_w / W`` around the box centre, as AlphaPose's inverse affine.
    """
    hm_h, hm_w = hm_size
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    bw = boxes[:, 2] - boxes[:, 0]
    bh = boxes[:, 3] - boxes[:, 1]
    centre = np.stack([boxes[:, 0] + bw * 0.5, boxes[:, 1] + bh * 0.5], axis=1)[:, None, :]
    s = (bw / hm_w)[:, None, None]
    offset = np.array([hm_w * 0.5, hm_h * 0.5])
    return centre + (np.asarray(cells, dtype=np.float64) - offset) * s


def sikr_decode(logits: torch.Tensor, boxes: torch.Tensor | np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Decode SIKR logits to image keypoints.

    Args:
        logits: (N, K, H, W) raw head output (already flip-averaged if flip test is on).
        boxes: (N, 4) crop boxes ``[x0, y0, x1, y1]`` in image pixels.
    Returns:
        coords (N, K, 2) float32 image pixels, scores (N, K, 1) float32 max-sigmoid confidence.
    """
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().numpy()
    boxes = np.asarray(boxes)
    if logits.dim() != 4 or boxes.shape != (logits.shape[0], 4):
        raise ValueError(f"sikr_decode: logits {tuple(logits.shape)} need (N, K, H, W) and boxes "
                         f"(N, 4), got boxes {boxes.shape}")
    hm_h, hm_w = logits.shape[-2:]
    with torch.no_grad():
        norm, conf = sikr_integral(logits.float())
    # Same float32 round trip as the reference: (c/W - 0.5 + 0.5) * W.
    norm = norm.cpu().numpy().astype(np.float32)
    cells = np.empty_like(norm)
    cells[..., 0] = (norm[..., 0] + 0.5) * hm_w
    cells[..., 1] = (norm[..., 1] + 0.5) * hm_h
    coords = crop_to_image(cells, boxes, (hm_h, hm_w)).astype(np.float32)
    return coords, conf.cpu().numpy().astype(np.float32)


def flip_heatmap_back(maps: torch.Tensor, flip_pairs: Sequence[tuple[int, int]], shift: bool = True
                      ) -> torch.Tensor:
    """Map of a mirrored crop -> map in the original frame: (N, K, H, W) -> (N, K, H, W).

    Mirrors W, swaps left/right channels and (``shift``) moves every column one to the right,
    keeping column 0 (cloned shift; see module docstring).
    """
    out = maps.flip(dims=(-1,))
    perm = torch.arange(out.shape[1], device=out.device)
    for a, b in flip_pairs:
        perm[a], perm[b] = b, a
    out = out[:, perm]
    if shift:
        out = torch.cat((out[..., :1], out[..., :-1]), dim=-1)
    return out


def flip_test_logits(model: nn.Module, crops: torch.Tensor, flip_pairs: Sequence[tuple[int, int]],
                     amp: bool = False, autocast: Callable[[], ContextManager] | None = None
                     ) -> torch.Tensor:
    """Run ``model`` on (N, 3, h, w) crops and their mirror; return averaged RAW logits (N, K, H, W).

    ``amp`` enables float16 autocast and channels_last on CUDA only; on CPU both are ignored.
    ``autocast`` (a context factory, e.g. ``Precision.autocast``) replaces ``amp`` when given.
    """
    cuda = crops.is_cuda
    inp = torch.cat((crops, crops.flip(dims=(-1,))), dim=0)
    if cuda and (amp or autocast is not None):
        inp = inp.contiguous(memory_format=torch.channels_last)
    ctx = autocast() if autocast is not None else torch.autocast("cuda", dtype=torch.float16,
                                                                    enabled=cuda and amp)
    with torch.no_grad(), ctx:
        out = model(inp).float()
    n = crops.shape[0]
    return (out[:n] + flip_heatmap_back(out[n:], flip_pairs, shift=True)) / 2


def sikr_targets(joints: np.ndarray, visible: np.ndarray, crop_size: tuple[int, int] = (256, 192)
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Regression targets for (N, K, 2) crop-pixel joints and (N, K) visibility.

    Returns target (N, 2K) ``[x0, y0, x1, y1, ...]`` as ``x / crop_w - 0.5``, ``y / crop_h - 0.5``
    and weight (N, 2K) = visibility, doubled for the leading body joints of 136/133/68-point sets.
    """
    joints = np.asarray(joints, dtype=np.float32)
    visible = np.asarray(visible, dtype=np.float32)
    n, k, _ = joints.shape
    crop_h, crop_w = crop_size
    target = np.empty((n, k, 2), dtype=np.float32)
    target[..., 0] = joints[..., 0] / crop_w - 0.5
    target[..., 1] = joints[..., 1] / crop_h - 0.5
    weight = np.repeat(visible[..., None], 2, axis=2)
    if k in BODY_WEIGHTED_PREFIX:
        weight[:, :BODY_WEIGHTED_PREFIX[k]] *= 2
    return target.reshape(n, 2 * k), weight.reshape(n, 2 * k)


def sikr_l1_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                 symmetric_grad: bool = True, amplitude: float = AMPLITUDE) -> torch.Tensor:
    """AlphaPose ``L1JointRegression``: ``sum(|pred - gt| * w) / N`` (scalar).

    ``logits`` (N, K, H, W); ``target``/``weight`` (N, 2K) interleaved x/y or (N, K, 2).
    """
    n, k = logits.shape[:2]
    if target.requires_grad or weight.requires_grad:
        raise ValueError("sikr_l1_loss: target and weight must not require gradients")
    pred, _ = sikr_integral(logits, symmetric_grad=symmetric_grad, amplitude=amplitude)
    pred = pred.reshape(n, 2 * k)
    return ((pred - target.reshape(n, 2 * k)).abs() * weight.reshape(n, 2 * k)).sum() / n

