"""Semi-supervised training of temporal-convolution lifters (VideoPose3D back-projection).

Reference semantics (the semi-supervised branch of VideoPose3D's run.py):

- unlabeled subjects come from a second, *endless* stream of windows (own seed, 4321 in
  the reference) with the same batch size, flip augmentation and window geometry as the
  labeled stream; the stream is advanced once per labeled batch, also during warm-up, so
  its position depends only on how many labeled batches were trained;
- from epoch ``warmup`` on (0-based epochs done), the unlabeled windows are concatenated
  to the labeled ones for ONE forward pass of the pose and trajectory models (BatchNorm
  statistics then cover both halves);
- the loss adds the 2D reprojection MPJPE of (pose + trajectory) projected through the
  full camera model (``linear_projection``: focal and centre only) against the unlabeled
  2D at the predicted frames, and the bone-length term: mean over bones of
  |mean labeled length - mean unlabeled length| (predictions on both sides);
- a flipped window uses flipped intrinsics (cx and p1 negated).

Differences, on purpose: the stream is a pure function of (pass, position) -- pass ``p``
is the permutation ``default_rng([seed, p])`` of all windows -- so a resumed run continues
the exact same stream (the reference only restores the RandomState and so starts a new
permutation). For causal models the 2D target is the frame the model predicts (the
window's last frame); the reference slices the window centre there, which is only the
predicted frame for the centred model.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from poselift.core.errors import UserError
from poselift.datasets.cache import Cache
from poselift.datasets.cameras import flip_camera_params, project_to_2d, project_to_2d_linear
from poselift.datasets.joints import get_joint_set
from poselift.datasets.protocols import select
from poselift.datasets.window_dataset import CacheWindowDataset, Field, FlipRule
from poselift.datasets.windows import make_windows, segments_from_lengths

from .data import image_sizes, normalize_pixels
from .losses import bone_length_loss, projection_loss

__all__ = ["SemiSupervisedError", "UnlabeledStream", "open_unlabeled", "camera_intrinsics",
           "reprojection_loss", "semi_supervised_terms"]


class SemiSupervisedError(UserError, ValueError):
    """Semi-supervision cannot run on this data or configuration; names the file/key."""


def camera_intrinsics(cache: Cache, ids: Sequence[str]) -> np.ndarray:
    """(S, 9) float32 normalised intrinsics ``[fx, fy, cx, cy, k1, k2, k3, p1, p2]`` from the
    ``camera_params`` attribute of every sequence; raises naming the file and sequence when
    one has none (HumanEva-I and custom data carry no intrinsics)."""
    out = []
    for sid in ids:
        params = cache.info(sid).attrs.get("camera_params")
        intr = params.get("intrinsic") if isinstance(params, dict) else None
        if intr is None or len(intr) != 9:
            raise SemiSupervisedError(
                f"{cache.path}: sequence {sid!r} has no camera intrinsics (attribute "
                f"'camera_params.intrinsic'; dataset {cache.header.dataset!r}). Semi-supervised "
                f"training projects predictions through the camera, which is only available "
                f"for Human3.6M")
        out.append(np.asarray(intr, np.float32))
    return np.stack(out)


class UnlabeledStream:
    """Endless batches of unlabeled 2D windows with their (flip-aware) intrinsics.

    Args:
        dataset: windows over the unlabeled 2D cache with fields ``kp2d`` (inputs) and
            ``kp2d_target`` (targets); ``flip="double"`` lists every window twice.
        cameras: (S, 9) intrinsics per sequence of ``dataset.ids``.
        batch_size: windows per batch (the last batch of a pass is smaller).
        seed: pass ``p`` visits the windows in the order ``default_rng([seed, p])``.
    """

    def __init__(self, dataset: CacheWindowDataset, cameras: np.ndarray, batch_size: int,
                 seed: int) -> None:
        if len(dataset) == 0:
            raise SemiSupervisedError("the unlabeled stream has no windows")
        self.dataset, self.cameras = dataset, np.asarray(cameras, np.float32)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.pass_index, self.position = 0, 0
        self._order: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def _take(self) -> np.ndarray:
        if self.position >= len(self.dataset):
            self.pass_index, self.position, self._order = self.pass_index + 1, 0, None
        if self._order is None:
            self._order = np.random.default_rng([self.seed, self.pass_index]).permutation(len(self.dataset))
        idx = self._order[self.position:self.position + self.batch_size]
        self.position += len(idx)
        return idx

    def skip(self) -> None:
        """Advance by one batch without gathering it (warm-up epochs)."""
        self._take()

    def next_batch(self) -> dict[str, torch.Tensor]:
        """``kp2d`` (B, T_in, J, 2), ``kp2d_target`` (B, n_t, J, 2), ``camera`` (B, 9),
        ``target_valid`` (B, n_t), ``flipped`` (B,)."""
        batch = self.dataset.get_batch(self._take())
        cams = self.cameras[batch["seq"].numpy()]
        flipped = batch["flipped"].numpy()
        if flipped.any():
            cams = cams.copy()
            cams[flipped] = flip_camera_params(cams[flipped])
        batch["camera"] = torch.from_numpy(np.ascontiguousarray(cams))
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"pass_index": self.pass_index, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["seed"]) != self.seed:
            raise SemiSupervisedError(f"unlabeled stream state was saved with seed {state['seed']}, "
                                      f"this run uses {self.seed}")
        self.pass_index, self.position, self._order = int(state["pass_index"]), int(state["position"]), None


def open_unlabeled(cache_path: str, subjects: Sequence[str], actions: Sequence[str] | None, *,
                   downsample: int, left: int, right: int, chunk: int, flip: bool,
                   batch_size: int, seed: int, dataset: str | None = None,
                   joint_set: str | None = None) -> UnlabeledStream:
    """Build the unlabeled stream over ``subjects`` of a keypoints2d cache (no 3D is read).

    As the reference's ``fetch(subjects_semi, action_filter, parse_3d_poses=False)``: the
    action filter and ``downsample`` apply, ``subset`` does not. ``dataset`` /
    ``joint_set`` (None = any) are checked against the cache header.
    """
    kp = Cache(cache_path, kind="keypoints2d", dataset=dataset or None, joint_set=joint_set or None)
    chosen = select(kp, list(subjects), list(actions) if actions else None, 1.0, downsample)
    if not chosen:
        raise SemiSupervisedError(f"{cache_path}: no sequences of unlabeled subjects {list(subjects)} "
                                  f"(actions {list(actions) if actions else 'all'})")
    ids = [c.seq_id for c in chosen]
    frames = {c.seq_id: c.frames for c in chosen}
    cameras = camera_intrinsics(kp, ids)
    wh = image_sizes(kp, ids)
    norm = (lambda a, s: normalize_pixels(a, wh[s, 0], wh[s, 1]))  # noqa: E731 - per-video pixels
    rule = FlipRule(get_joint_set(kp.header.joint_set or "").flip_permutation())
    fields = {"kp2d": Field(kp, "keypoints", "inputs", preload=True, transform=norm, flip=rule),
              "kp2d_target": Field(kp, "keypoints", "targets", preload=True, transform=norm, flip=rule)}
    lengths = [c.n_frames for c in chosen]
    windows = make_windows(segments_from_lengths(lengths), left=left, right=right, n_targets=chunk)
    ds = CacheWindowDataset(fields, ids, windows, flip="double" if flip else None, frames=frames)
    return UnlabeledStream(ds, cameras, batch_size, seed)


def reprojection_loss(pose: torch.Tensor, traj: torch.Tensor, target_2d: torch.Tensor,
                      cameras: torch.Tensor, valid: torch.Tensor | None = None,
                      linear: bool = False) -> torch.Tensor:
    """2D MPJPE of ``pose + traj`` projected through per-window cameras.

    pose: (B, T, J, 3) root-relative prediction; traj: (B, T, 1, 3) root position (camera
    frame, metres); target_2d: (B, T, J, 2) normalised screen coordinates; cameras: (B, 9);
    valid: optional (B, T) mask of real (not padded) target frames.
    """
    points = pose + traj
    cams = cameras[:, None, :].expand(points.shape[0], points.shape[1], cameras.shape[-1])
    if valid is not None:
        points, cams, target_2d = points[valid], cams[valid], target_2d[valid]
    else:
        points, cams, target_2d = points.flatten(0, 1), cams.flatten(0, 1), target_2d.flatten(0, 1)
    project = project_to_2d_linear if linear else project_to_2d
    return projection_loss(project(points, cams), target_2d)


def semi_supervised_terms(pose_lab: torch.Tensor, pose_unl: torch.Tensor, traj_unl: torch.Tensor,
                          target_2d: torch.Tensor, cameras: torch.Tensor, parents: Sequence[int], *,
                          valid_lab: torch.Tensor | None = None, valid_unl: torch.Tensor | None = None,
                          linear: bool = False) -> dict[str, torch.Tensor]:
    """The two unlabeled loss terms: ``{"projection": 2D MPJPE, "bone": bone-length term}``.

    pose_lab: (B1, T, J, 3) predictions for the labeled windows; pose_unl / traj_unl:
    (B2, T, J, 3) / (B2, T, 1, 3) for the unlabeled ones; target_2d (B2, T, J, 2);
    cameras (B2, 9); parents: J entries of the output skeleton (-1 = root).
    """
    lab = pose_lab[valid_lab] if valid_lab is not None else pose_lab
    unl = pose_unl[valid_unl] if valid_unl is not None else pose_unl
    return {"projection": reprojection_loss(pose_unl, traj_unl, target_2d, cameras, valid_unl, linear),
            "bone": bone_length_loss(lab, unl, parents)}
