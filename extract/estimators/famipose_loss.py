"""FAMI-Pose training objective: heatmap MSE plus the mutual-information (MI) objective.

Heatmap term (both variants): the release's ``JointMSELoss`` with target weights,
summed per-joint MSE divided by J and *without* HRNet's 0.5 factor, i.e.
mean over (B, J, h*w) of ((pred - gt) * w_j)^2. ``half=True`` gives HRNet's version.

MI term, paper variant (``release_mi=False``, weight 0.1). The paper maximises the
task-relevant information the aligned features z~ add to the key feature z_t while
losing nothing from the supporting feature z_s:

    L_MI = -I(y; z~ | z_t) + I(y; z_s | z~) + I(y; z_t | z~)

Each conditional term is expanded with the chain rule the release's six-term list
encodes, I(y; a | b) ~= I(y; a) - I(a; b), giving
-[I(y;z~) - I(z_t;z~)] + [I(y;z_s) - I(z_s;z~)] + [I(y;z_t) - I(z_t;z~)].
Here y is the ground-truth heatmap, z~ = ``all_agg_features`` and z_s = ``agg_sup_feat``.

Estimator: each channel (joint) of a map is read as a distribution over the h*w
locations, p = softmax(map / T) with T = 0.05. For a pair (x -> v) we use the
Barber-Agakov variational bound with the log-probability decoder q(v | x):
I(x; v) >= H(v) + E_p(v)[log q(v | x)] = -KL(p_v || q_x) + const,
so ``mi_estimate`` returns -KL(p_v || q_x) (summed over locations, averaged over
(B, channel) with optional joint weights) using log-softmax on both sides. For
feature-label pairs the decoder is the frozen backbone head ``hrnet.final_layer``
applied to the feature; feature-feature pairs compare channel i with channel i, as
the release does. The feature being conditioned *against* (z_s in I(y; z_s | z~))
is detached so that only z~ learns to absorb its information.

Release variant (``release_mi=True``) reproduces ``Alignment_V15`` exactly:
``F.kl_div(input=softmax(a/T).detach(), target=softmax(b/T), reduction='mean')``
(a probability, not a log-probability, as ``input``), six terms with term 6 a copy
of term 2, combined as 0.5 * (-0.1*m1 + 0.1*m2 + m3 - m4 + m5 - m6).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from poselift.extract.estimators.famipose import FamiOutput

__all__ = ["joint_mse_loss", "release_kl", "release_mi_terms", "release_mi_loss", "mi_estimate",
           "paper_mi_terms", "paper_mi_loss", "famipose_loss"]

TEMPERATURE = 0.05


def joint_mse_loss(pred: torch.Tensor, target: torch.Tensor, target_weight: torch.Tensor | None = None,
                   half: bool = False) -> torch.Tensor:
    """pred, target (B, J, h, w); target_weight (B, J) or (B, J, 1). Scalar."""
    b, j = pred.shape[:2]
    diff = (pred - target).reshape(b, j, -1)
    if target_weight is not None:
        diff = diff * target_weight.reshape(b, j, 1).to(diff.dtype)
    loss = diff.pow(2).mean()
    return 0.5 * loss if half else loss


def _spatial(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0] * x.shape[1], -1)


def release_kl(a: torch.Tensor, b: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """The release's "MI": mean over all (B*C*h*w) elements of p*log(p) - p*q with
    q = softmax(a/T).detach(), p = softmax(b/T) over locations; a, b (B, C, h, w).
    Same value and gradient as F.kl_div(q, p, reduction='mean')."""
    q = torch.softmax(_spatial(a).detach() / temperature, dim=1)
    p = torch.softmax(_spatial(b) / temperature, dim=1)
    # 'sum' / numel is 'mean' without its deprecation warning; F.kl_div (not xlogy) keeps
    # the zero gradient where a sharpened softmax underflows to p = 0.
    return F.kl_div(q, p, reduction="sum") / p.numel()


def release_mi_terms(out: FamiOutput, final_layer: nn.Module, temperature: float = TEMPERATURE) -> list[torch.Tensor]:
    """The six release terms, in order (heatmap = the model's final heatmap)."""
    hm, agg, key, sup = out.heatmaps, out.all_agg_features, out.key_feat, out.agg_sup_feat
    t2 = release_kl(key, agg, temperature)
    return [release_kl(final_layer(agg), hm, temperature), t2, release_kl(final_layer(sup), hm, temperature),
            release_kl(sup, agg, temperature), release_kl(final_layer(key), hm, temperature),
            release_kl(key, agg, temperature)]


def release_mi_loss(terms: list[torch.Tensor], alpha: float = 0.5, beta: float = 0.1) -> torch.Tensor:
    m1, m2, m3, m4, m5, m6 = terms
    return alpha * (-beta * m1 + beta * m2 + m3 - m4 + m5 - m6)


def mi_estimate(x_logits: torch.Tensor, v_maps: torch.Tensor, weight: torch.Tensor | None = None,
                temperature: float = TEMPERATURE) -> torch.Tensor:
    """-KL(p_v || q_x) per (B, C) unit, averaged (weighted by ``weight`` (B, C) if given).

    x_logits: decoder output for the conditioning variable, (B, C, h, w); v_maps: the
    variable being predicted, (B, C, h, w). Maximising it maximises the
    Barber-Agakov lower bound on I(x; v) (up to the constant entropy of v).
    """
    log_q = F.log_softmax(_spatial(x_logits) / temperature, dim=1)
    log_p = F.log_softmax(_spatial(v_maps) / temperature, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    if weight is None:
        return -kl.mean()
    w = weight.reshape(-1).to(kl.dtype)
    return -(kl * w).sum() / w.sum().clamp_min(1e-12)


def paper_mi_terms(out: FamiOutput, target: torch.Tensor, final_layer: nn.Module,
                   target_weight: torch.Tensor | None = None,
                   temperature: float = TEMPERATURE) -> dict[str, torch.Tensor]:
    """Pairwise MI estimates used by :func:`paper_mi_loss`; target (B, J, h, w) GT heatmaps."""
    w = None if target_weight is None else target_weight.reshape(target.shape[0], target.shape[1])
    agg, key, sup = out.all_agg_features, out.key_feat, out.agg_sup_feat.detach()
    return {
        "y_agg": mi_estimate(final_layer(agg), target, w, temperature),
        "key_agg": mi_estimate(agg, key, None, temperature),
        "y_sup": mi_estimate(final_layer(sup), target, w, temperature),
        "sup_agg": mi_estimate(agg, sup, None, temperature),
        "y_key": mi_estimate(final_layer(key), target, w, temperature),
    }


def paper_mi_loss(t: dict[str, torch.Tensor]) -> torch.Tensor:
    """-I(y; z~|z_t) + I(y; z_s|z~) + I(y; z_t|z~) via the chain-rule expansion."""
    return (-(t["y_agg"] - t["key_agg"]) + (t["y_sup"] - t["sup_agg"]) + (t["y_key"] - t["key_agg"]))


def famipose_loss(out: FamiOutput, target: torch.Tensor, target_weight: torch.Tensor | None,
                  final_layer: nn.Module, release_mi: bool = False, mi_weight: float = 0.1,
                  mse_weight: float = 1.0, temperature: float = TEMPERATURE) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its parts. target (B, J, h, w); target_weight (B, J[, 1]).

    Paper: mse_weight * MSE + mi_weight * L_MI. Release: MSE + the release MI (its own
    0.5 / 0.1 weights; ``mi_weight`` is ignored there).
    """
    mse = joint_mse_loss(out.heatmaps, target, target_weight)
    parts: dict[str, torch.Tensor] = {"mse": mse}
    if release_mi:
        terms = release_mi_terms(out, final_layer, temperature)
        parts.update({f"mi_{i + 1}": v for i, v in enumerate(terms)})
        mi = release_mi_loss(terms)
        total = mse_weight * mse + mi
    else:
        terms_d = paper_mi_terms(out, target, final_layer, target_weight, temperature)
        parts.update({f"mi_{k}": v for k, v in terms_d.items()})
        mi = paper_mi_loss(terms_d)
        total = mse_weight * mse + mi_weight * mi
    parts["mi"] = mi
    parts["total"] = total
    return total, parts
