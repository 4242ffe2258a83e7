"""Read and write VideoPose3D ``.bin`` checkpoints (the dict ``run.py`` saves).

Layout: ``{"epoch", "lr", "random_state": RandomState,
"optimizer": state_dict, "model_pos": state_dict, "model_traj": state_dict or None,
"random_state_semi": RandomState or None}``. ``model_pos`` is usually the
state_dict of the strided training model; keys and shapes equal the
:class:`~poselift.lifting.videopose3d.model.TemporalModel` ones, so it loads with an
identity key map. The architecture is inferred from weight shapes; the causal
flag cannot be (same weights), so it is an argument.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import types
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from poselift.core.checkpoints import CheckpointError, load_checkpoint, load_strict
from poselift.zoo import resolve_weights
from poselift.lifting.videopose3d.model import TemporalModel, TemporalModelBase, validate_filter_widths

__all__ = [
    "CheckpointFormatError",
    "export_videopose3d",
    "infer_videopose3d_arch",
    "load_videopose3d",
    "load_videopose3d_state_dict",
    "load_weights_into",
    "read_videopose3d",
]


# The one checkpoint error, under the name this module has always exported.
CheckpointFormatError = CheckpointError


def _shape(sd: Mapping[str, Any], key: str, where: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointFormatError(f"{where}: missing key {key!r}")
    value = sd[key]
    if not isinstance(value, torch.Tensor):
        raise CheckpointFormatError(f"{where}: {key!r} is a {type(value).__name__}, not a tensor")
    return tuple(value.shape)


def _looks_dense(kernels: Sequence[int]) -> bool:
    """True if every block kernel fits the dense formula k_i = (w_i - 1) * d_i + 1, w_i >= 3.

    Such a layout read as dilated would need widths like 3,7,19 (RF 399), never
    used by the reference; read as dense it is the usual 3,3,3.
    """
    if len(kernels) < 2 or kernels[0] < 3:
        return False
    d = kernels[0]
    for k in kernels[1:]:
        if (k - 1) % d or (k - 1) // d < 2 or ((k - 1) // d) % 2:
            return False
        d *= (k - 1) // d + 1
    return True


def infer_videopose3d_arch(state_dict: Mapping[str, Any], dense: bool = False,
                           in_features: int = 2, where: str = "<state_dict>",
                           filter_widths: Sequence[int] | None = None) -> dict[str, Any]:
    """Constructor kwargs of :class:`TemporalModel` that match ``state_dict``'s shapes.

    Returns ``num_joints_in``, ``in_features``, ``num_joints_out``, ``filter_widths``,
    ``channels``, ``dense``. ``filter_widths`` overrides inference (for layouts
    that are ambiguous, see :func:`_looks_dense`). ``where`` prefixes errors.
    """
    first = _shape(state_dict, "expand_conv.weight", where)
    if len(first) != 3:
        raise CheckpointFormatError(
            f"{where}: layer expand_conv has weight shape {first}, expected (C, J_in*F, w0)")
    c, cin, w0 = first
    if cin % in_features:
        raise CheckpointFormatError(
            f"{where}: 'expand_conv.weight' has {cin} input channels, not a multiple of "
            f"in_features={in_features}")
    conv_ids = sorted(int(k.split(".")[1]) for k in state_dict
                      if k.startswith("layers_conv.") and k.count(".") == 2
                      and k.split(".")[1].isdigit())
    n_conv = conv_ids[-1] + 1 if conv_ids else 0
    for i in range(n_conv + (n_conv % 2)):
        if i not in conv_ids:
            raise CheckpointFormatError(
                f"{where}: missing key 'layers_conv.{i}.weight' (layer layers_conv.{i}; "
                "each residual block has a dilated conv and a 1x1 conv)")
    kernels = [w0]
    for i in range(0, n_conv, 2):
        for j, kind in ((i, "dilated"), (i + 1, "1x1")):
            shp = _shape(state_dict, f"layers_conv.{j}.weight", where)
            if len(shp) != 3 or shp[0] != c or shp[1] != c:
                raise CheckpointFormatError(
                    f"{where}: layer layers_conv.{j} ({kind} conv) has weight shape {shp}, "
                    f"expected ({c}, {c}, k) with C={c} channels from expand_conv")
            if kind == "1x1" and shp[2] != 1:
                raise CheckpointFormatError(
                    f"{where}: layer layers_conv.{j} should be a 1x1 conv, has kernel {shp[2]}")
        kernels.append(_shape(state_dict, f"layers_conv.{i}.weight", where)[2])
    if filter_widths is not None:
        widths = list(validate_filter_widths(filter_widths))
        if len(widths) != len(kernels):
            raise CheckpointFormatError(
                f"{where}: filter_widths={widths} has {len(widths)} levels, the layers "
                f"(expand_conv + {len(kernels) - 1} blocks in layers_conv) have {len(kernels)}")
    elif dense:
        if w0 % 2 == 0:
            raise CheckpointFormatError(
                f"{where}: layer expand_conv has an even kernel {w0}; filter widths must be odd")
        widths = [w0]
        for lvl, k in enumerate(kernels[1:], start=1):
            d = math.prod(widths)
            if (k - 1) % d or ((k - 1) // d) % 2:
                raise CheckpointFormatError(
                    f"{where}: layer layers_conv.{2 * lvl - 2} has kernel {k}, which is not "
                    f"(w - 1) * {d} + 1 for an odd width w; not a dense checkpoint?")
            widths.append((k - 1) // d + 1)
    else:
        for lvl, k in enumerate(kernels):
            if k % 2 == 0:
                layer = "expand_conv" if lvl == 0 else f"layers_conv.{2 * lvl - 2}"
                raise CheckpointFormatError(
                    f"{where}: layer {layer} has an even kernel {k}; filter widths must be odd")
        if _looks_dense(kernels):
            raise CheckpointFormatError(
                f"{where}: kernels {kernels} (layers expand_conv, layers_conv.0, ...) look like "
                "a dense checkpoint; load it with dense=True, or pass filter_widths=... "
                "to read it as dilated")
        widths = kernels
    out = _shape(state_dict, "shrink.weight", where)
    if len(out) != 3 or out[0] % 3 or out[1] != c or out[2] != 1:
        raise CheckpointFormatError(
            f"{where}: layer shrink has weight shape {out}, expected (3 * J_out, {c}, 1)")
    return {"num_joints_in": cin // in_features, "in_features": in_features,
            "num_joints_out": out[0] // 3, "filter_widths": widths, "channels": c,
            "dense": bool(dense)}


def load_videopose3d_state_dict(state_dict: Mapping[str, Any], causal: bool = False,
                                dense: bool = False, in_features: int = 2,
                                filter_widths: Sequence[int] | None = None,
                                where: str = "<state_dict>") -> TemporalModel:
    """Build a :class:`TemporalModel` matching ``state_dict`` and load it strictly (eval mode)."""
    arch = infer_videopose3d_arch(state_dict, dense=dense, in_features=in_features,
                                  where=where, filter_widths=filter_widths)
    model = TemporalModel(causal=causal, **arch)
    load_strict(model, state_dict, where)
    return model.eval()


def read_videopose3d(path: str | os.PathLike[str], map_location: Any = "cpu",
                     trust_pickle: bool = False) -> tuple[str, Mapping[str, Any]]:
    """Safely read a ``.bin`` (path or zoo name); returns (resolved path, the checkpoint dict,
    checked to hold ``model_pos``)."""
    src = os.fspath(resolve_weights(path))  # a zoo name ("videopose3d-h36m-cpn") or a path
    # The one reader: refused globals, junk bytes and truncated files all become one
    # CheckpointError naming the file.
    ckpt = load_checkpoint(src, trust=trust_pickle, map_location=map_location)
    if not isinstance(ckpt, Mapping):
        raise CheckpointFormatError(f"{src}: expected a dict checkpoint, got {type(ckpt).__name__}")
    if ckpt.get("model_pos") is None:
        raise CheckpointFormatError(f"{src}: missing key 'model_pos' (keys: {sorted(ckpt)})")
    return src, ckpt


def load_weights_into(model: TemporalModelBase, state_dict: Mapping[str, Any], where: str) -> None:
    """Strictly load released weights into an already built (configured) model.

    Any missing / unexpected / misshaped key raises one ``CheckpointError`` naming ``where``
    and the key, with the architecture the file holds when it can be read from the shapes
    (so the config can be fixed)."""
    try:
        load_strict(model, state_dict, where)
    except CheckpointFormatError as e:
        try:
            arch = infer_videopose3d_arch(state_dict, where=where)
            held = (f"; the file holds filter_widths {arch['filter_widths']}, channels "
                    f"{arch['channels']}, {arch['num_joints_in']} -> {arch['num_joints_out']} joints")
        except CheckpointFormatError:
            held = ""
        ours = model.constructor_args()
        raise CheckpointFormatError(
            f"{e}{held}; the configured model has filter_widths {list(ours['filter_widths'])}, "
            f"channels {ours['channels']}, {ours['num_joints_in']} -> {ours['num_joints_out']} "
            f"joints") from None


def load_videopose3d(path: str | os.PathLike[str], causal: bool = False, dense: bool = False,
                     map_location: Any = "cpu", trust_pickle: bool = False,
                     in_features: int = 2,
                     filter_widths: Sequence[int] | None = None,
                     ) -> tuple[TemporalModel, TemporalModel | None]:
    """Load a VideoPose3D ``.bin`` (path or zoo name); returns ``(model_pos, model_traj or None)``.

    Models take (B, T, J_in, in_features) and return (B, T - RF + 1, J_out, 3);
    ``model_traj`` has J_out = 1. Pickled globals are restricted to numpy arrays,
    scalars and RandomState (numpy 1.x and 2 spellings); ``trust_pickle=True``
    allows full unpickling. Errors name the file and the offending key/layer.
    """
    src, ckpt = read_videopose3d(path, map_location=map_location, trust_pickle=trust_pickle)
    kwargs = {"causal": causal, "dense": dense, "in_features": in_features,
              "filter_widths": filter_widths}
    model_pos = load_videopose3d_state_dict(ckpt["model_pos"], where=f"{src} [model_pos]", **kwargs)
    model_traj = None
    if ckpt.get("model_traj") is not None:
        where = f"{src} [model_traj]"
        model_traj = load_videopose3d_state_dict(ckpt["model_traj"], where=where, **kwargs)
        if model_traj.num_joints_out != 1:
            raise CheckpointFormatError(
                f"{where}: layer shrink regresses {model_traj.num_joints_out} joints; a "
                "trajectory model has exactly 1")
    if isinstance(map_location, (str, torch.device)):
        model_pos.to(map_location)
        if model_traj is not None:
            model_traj.to(map_location)
    return model_pos, model_traj


# -- export -------------------------------------------------------------------------
_RANDOMSTATE_CTOR = getattr(np.random, "__RandomState_ctor")
_LEGACY_CORE = {id(np._core.multiarray._reconstruct): b"_reconstruct",
                id(np._core.multiarray.scalar): b"scalar"}


class _Numpy1Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pickler writing numpy objects under numpy-1.x names (readable by numpy 1.x and 2).

    Reference run.py environments run numpy 1.x, which cannot resolve
    ``numpy._core`` nor (before 1.17) the ``numpy.random._pickle`` helpers; numpy
    2 still reads ``numpy.core.multiarray`` and ``numpy.random.__RandomState_ctor``.
    Protocol-2 GLOBAL opcodes are text, so writing them directly is exact.
    """

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is np.random.RandomState:
            return (_RANDOMSTATE_CTOR, (), obj.get_state(legacy=True))
        return NotImplemented

    def save_global(self, obj: Any, name: str | None = None) -> None:
        legacy = _LEGACY_CORE.get(id(obj))
        if legacy is not None and self.proto < 4:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n" + legacy + b"\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _numpy1_dump(obj: Any, file: Any, protocol: int = 2, **_: Any) -> None:
    _Numpy1Pickler(file, protocol=protocol).dump(obj)


_NUMPY1_PICKLE = types.SimpleNamespace(Pickler=_Numpy1Pickler, dump=_numpy1_dump,
                                       __name__="poselift_numpy1_pickle")


def _cpu_state_dict(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    sd = model.state_dict()
    out: OrderedDict[str, torch.Tensor] = OrderedDict((k, v.detach().cpu()) for k, v in sd.items())
    out._metadata = getattr(sd, "_metadata", None)  # type: ignore[attr-defined]
    return out


def export_videopose3d(path: str | os.PathLike[str], model_pos: TemporalModelBase,
                       model_traj: TemporalModelBase | None = None, epoch: int = 0,
                       lr: float = 1e-3, optimizer_state: Mapping[str, Any] | None = None) -> None:
    """Write ``model_pos`` (and ``model_traj``) as a run.py-style ``.bin``.

    ``random_state`` is a fresh ``RandomState(1234)`` (the training generator's
    seed) and ``random_state_semi`` a fresh ``RandomState(4321)`` when a
    trajectory model is given (run.py saves one only when semi-supervised).
    Without ``optimizer_state`` a fresh Adam(amsgrad) state over the same
    parameters run.py optimises (pose, then trajectory) is written, so
    ``--resume`` can load it. Numpy objects are pickled under numpy-1.x names.
    """
    if model_traj is not None and model_traj.num_joints_out != 1:
        raise ValueError(f"model_traj must regress 1 joint, has num_joints_out={model_traj.num_joints_out}")
    if optimizer_state is None:
        params = list(model_pos.parameters())
        if model_traj is not None:
            params += list(model_traj.parameters())
        optimizer_state = torch.optim.Adam(params, lr=lr, amsgrad=True).state_dict()
    ckpt = {
        "epoch": int(epoch),
        "lr": float(lr),
        "random_state": np.random.RandomState(1234),
        "optimizer": optimizer_state,
        "model_pos": _cpu_state_dict(model_pos),
        "model_traj": _cpu_state_dict(model_traj) if model_traj is not None else None,
        "random_state_semi": np.random.RandomState(4321) if model_traj is not None else None,
    }
    tmp = f"{os.fspath(path)}.tmp"
    buf = io.BytesIO()
    torch.save(ckpt, buf, pickle_module=_NUMPY1_PICKLE, pickle_protocol=2)
    with open(tmp, "wb") as fh:  # write then rename: no half-written .bin on failure
        fh.write(buf.getvalue())
    os.replace(tmp, path)
