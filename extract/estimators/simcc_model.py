"""SimCC pose estimator for extraction: HRNet joint maps -> :class:`SimCCHead`, loader, flip test.

:class:`SimCCPose` has the module names of the trainer's ``SimCCModel`` (``maps`` = HRNet,
``head`` = SimCCHead), so the ``model_best.pth`` that ``poselift-train`` writes for the
``simcc`` recipe loads as it is. :func:`load_simcc` reads three checkpoint layouts and maps
them onto those names, then loads strictly (missing / unexpected / misshaped keys raise a
:class:`CheckpointError` naming the file and the keys):

* ``poselift``: ``maps.<HRNet keys>`` + ``head.mlp_head_{x,y}.{weight,bias}`` (a plain state dict).
* ``simcc``: leeyegy/SimCC, the HRNet keys at top level (``conv1.*`` ... ``final_layer.*``) plus
  ``mlp_head_x`` / ``mlp_head_y`` (the head names ``estimators2d.md`` section 1.9 describes;
  ``state_dict`` / ``module.`` wrappers are removed).
* ``mmpose``: ``backbone.<HRNet keys>``, ``head.final_layer.*`` (the 1x1 conv to K maps lives
  in MMPose's head) and ``head.mlp_head_{x,y}.*``, inside ``{"meta", "state_dict"}``.
  **Not verified against a released file**: ``estimators2d.md`` does not document MMPose's key
  names. The mapping assumes MMPose's HRNet backbone uses the official ``pose_hrnet`` names
  under ``backbone.``; if it does not, the strict load names every key that differs.

Sizes come from the weights: HRNet width / stages from the backbone keys, K from the final
conv, the map size from the head's input features, the split ratio k from the bins
(``x bins = W * k``) once the input size is known (default 256x192).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Callable, ContextManager, Mapping, Sequence

import torch
from torch import nn

from poselift.core.checkpoints import CheckpointError

from .hrnet import HRNet, extract_state_dict, infer_hrnet_config, load_state_dict_strict, read_checkpoint
from .simcc import SimCCHead

__all__ = ["SimCCPose", "load_simcc", "simcc_layout", "to_simcc_keys", "simcc_flip_test", "flip_simcc_back"]

LAYOUTS = ("poselift", "simcc", "mmpose")


class SimCCPose(nn.Module):
    """HRNet + SimCC head.

    forward(x (B, 3, H, W)) -> (x logits (B, K, W*k), y logits (B, K, H*k)); bin i = crop px i / k.
    """

    def __init__(self, hrnet: HRNet, input_size: tuple[int, int] = (256, 192), split_ratio: float = 2.0) -> None:
        super().__init__()
        h, w = input_size
        if h % 32 or w % 32:
            raise ValueError(f"SimCC/HRNet input size must be multiples of 32, got {input_size}")
        self.maps = hrnet
        self.head = SimCCHead((h // 4, w // 4), (w, h), split_ratio)
        self.num_joints = hrnet.num_joints
        self.input_size = (int(h), int(w))
        self.split_ratio = float(split_ratio)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.maps(x))


def simcc_layout(sd: Mapping[str, torch.Tensor]) -> str:
    """Which of :data:`LAYOUTS` a state dict follows (raises when none)."""
    # Any one head key decides; the strict load then names whatever else is missing.
    head = any(k.startswith("head.mlp_head_") for k in sd)
    if head and any(k.startswith("maps.") for k in sd):
        return "poselift"
    if head and any(k.startswith("backbone.") for k in sd):
        return "mmpose"
    if any(k.startswith("mlp_head_") for k in sd) and any(k.startswith("final_layer.") for k in sd):
        return "simcc"
    raise CheckpointError("no SimCC head found: expected 'head.mlp_head_x.*' with 'maps.*' (poselift) or "
                          "'backbone.*' (MMPose), or top-level 'mlp_head_x.*' with 'final_layer.*' (leeyegy/SimCC)")


def to_simcc_keys(sd: Mapping[str, torch.Tensor], source: str = "state dict") -> "OrderedDict[str, torch.Tensor]":
    """Rename any supported layout to :class:`SimCCPose` keys (``maps.*``, ``head.*``).
    Keys the layout does not explain are kept as they are, so the strict load reports them."""
    try:
        layout = simcc_layout(sd)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, v in sd.items():
        if layout == "poselift":
            nk = k
        elif layout == "simcc":
            nk = "head." + k if k.startswith("mlp_head_") else "maps." + k
        elif k.startswith("backbone."):
            nk = "maps." + k[len("backbone."):]
        elif k.startswith("head.final_layer."):
            nk = "maps." + k[len("head."):]
        else:
            nk = k
        out[nk] = v
    return out


def load_simcc(path_or_state_dict: str | Path | Mapping[str, torch.Tensor], input_size: tuple[int, int] = (256, 192),
               split_ratio: float | None = None, trust: bool = False) -> SimCCPose:
    """Build a :class:`SimCCPose` sized from the weights and load them strictly (eval mode).

    ``input_size`` (h, w) is the crop the weights were trained on; it must agree with the head
    (input features = (h/4)(w/4), bins = W*k and H*k with one k). ``split_ratio`` None reads k
    from the x bins; a given value must agree with the weights.
    """
    if isinstance(path_or_state_dict, Mapping):
        source = "state dict"
        raw = extract_state_dict(path_or_state_dict, source)
    else:
        source = str(path_or_state_dict)
        raw = extract_state_dict(read_checkpoint(path_or_state_dict, trust), source)
    sd = to_simcc_keys(raw, source)
    maps = OrderedDict((k[5:], v) for k, v in sd.items() if k.startswith("maps."))
    hrnet = HRNet(**infer_hrnet_config(maps, source))
    h, w = int(input_size[0]), int(input_size[1])
    for key in ("head.mlp_head_x.weight", "head.mlp_head_y.weight"):
        if key not in sd:
            raise CheckpointError(f"{source}: missing key {key!r} (the SimCC head)")
    wx, wy = sd["head.mlp_head_x.weight"], sd["head.mlp_head_y.weight"]
    if wx.shape[1] != (h // 4) * (w // 4):
        raise CheckpointError(f"{source}: head.mlp_head_x.weight reads {wx.shape[1]} features, but input "
                              f"{h}x{w} gives ({h // 4}*{w // 4}) = {(h // 4) * (w // 4)}; pass the input size "
                              "the weights were trained on")
    k = wx.shape[0] / w if split_ratio is None else float(split_ratio)
    if int(w * k) != wx.shape[0] or int(h * k) != wy.shape[0]:
        raise CheckpointError(f"{source}: head bins x={wx.shape[0]}, y={wy.shape[0]} do not fit input {h}x{w} "
                              f"with split ratio {k:g}")
    model = SimCCPose(hrnet, (h, w), k)
    load_state_dict_strict(model, sd, source)
    return model.eval()


def flip_simcc_back(x_logits: torch.Tensor, y_logits: torch.Tensor, flip_pairs: Sequence[tuple[int, int]]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a mirrored crop -> the unmirrored crop's: x bins reversed, left/right joints swapped.

    Plain reversal, as MMPose's ``flip_vectors``: bin j maps to W*k - 1 - j, i.e. x -> W - 1/k - x,
    which is (k - 1)/k px right of the exact mirror W - 1 - x (0.5 px at k = 2).
    """
    order = list(range(x_logits.shape[1]))
    for a, b in flip_pairs:
        order[a], order[b] = b, a
    return x_logits[:, order].flip(-1), y_logits[:, order]


def simcc_flip_test(model: nn.Module, crops: torch.Tensor, flip_pairs: Sequence[tuple[int, int]],
                    amp: bool = False, autocast: Callable[[], ContextManager] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` on (N, 3, h, w) crops and their mirror, average the raw logits:
    -> (x (N, K, W*k), y (N, K, H*k)) float32. ``autocast`` (a context factory) replaces
    ``amp`` (fp16 on CUDA) when given."""
    n = crops.shape[0]
    inp = torch.cat((crops, crops.flip(dims=(-1,))), dim=0)
    ctx = autocast() if autocast is not None else torch.autocast("cuda", dtype=torch.float16,
                                                                    enabled=crops.is_cuda and amp)
    with ctx:
        lx, ly = model(inp)
    fx, fy = flip_simcc_back(lx[n:].float(), ly[n:].float(), flip_pairs)
    return (lx[:n].float() + fx) / 2, (ly[:n].float() + fy) / 2
