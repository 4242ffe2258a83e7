"""Top-down keypoint training sets read from their own annotation files, cropped on the fly.

* :class:`CocoKeypoints`: COCO keypoints JSON (COCO-17) and Halpe JSON (the same layout with 26
  or 136 points). One sample per person annotation; crowd annotations are ignored (as COCO does),
  persons without labelled keypoints and zero-area boxes are skipped and counted.
* :class:`PoseTrackKeypoints`: PoseTrack18/21 JSON (``images`` with ``vid_id``/``frame_id``,
  ``annotations`` with ``track_id``); a sample is a labelled person in a key frame plus the
  supporting frames at offsets (-2, -1, 1, 2) (clamped to the video), all cropped with the key
  frame's matrix, as FAMI-Pose does.

Images are decoded in ``__getitem__``, i.e. in the DataLoader workers. Augmentation draws from
``np.random.default_rng([seed, epoch, index])``, so a sample depends only on (seed, epoch, index)
and not on the worker count or order. Images that are missing are skipped at load time (counted
in ``skipped``, named in the log); an image that fails to decode is replaced by the next sample,
with a warning naming the file.

A sample is a dict: ``image`` (3, H, W) float32 (the contract's normalisation), ``joints`` (K, 2)
crop px, ``visible`` (K,) float32, ``label_mask`` (K,) float32 (1 where the dataset annotates the
joint: 0 for Halpe's extra joints in a COCO set read for a Halpe model), ``affine`` (2, 3) image ->
crop, ``index``; PoseTrack adds ``support`` (4, 3, H, W).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from poselift.datasets.joints import get_joint_set

from ..contracts import PreprocessContract
from ..estimators.famipose import supporting_indices
from .augment import AugmentConfig, apply_affine, sample_affine, warp_sample
from .pgpg import PGPG

__all__ = ["KeypointSet", "CocoKeypoints", "PoseTrackKeypoints", "load_keypoint_json"]

log = logging.getLogger(__name__)
_BY_K = {17: "coco17", 26: "halpe26", 136: "halpe136"}


def load_keypoint_json(path: str | Path, num_joints: int, require: tuple[str, ...] = ()
                       ) -> tuple[dict[Any, dict], list[tuple[int, dict]], dict[str, int]]:
    """(images by id, [(annotation index, annotation)] usable, skip counts) of a COCO-style JSON.

    Errors name the file, the annotation index and the field."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read annotation JSON ({e})") from None
    for key in ("images", "annotations"):
        if key not in d:
            raise ValueError(f"{path}: missing field {key!r}")
    images = {}
    for i, im in enumerate(d["images"]):
        for key in ("id", "file_name") + require:
            if key not in im:
                raise ValueError(f"{path}: images[{i}] missing field {key!r}")
        images[im["id"]] = im
    skipped = {"crowd": 0, "no_keypoints": 0, "zero_area": 0}
    anns = []
    for n, a in enumerate(d["annotations"]):
        for key in ("image_id", "keypoints", "bbox"):
            if key not in a:
                raise ValueError(f"{path}: annotations[{n}] missing field {key!r}")
        if a["image_id"] not in images:
            raise ValueError(f"{path}: annotations[{n}] names image_id {a['image_id']!r}, not in 'images'")
        if len(a["keypoints"]) != 3 * num_joints:
            raise ValueError(f"{path}: annotations[{n}] has {len(a['keypoints']) // 3} keypoints, "
                             f"the model expects {num_joints}")
        if a.get("iscrowd", 0):
            skipped["crowd"] += 1
        elif not any(v > 0 for v in a["keypoints"][2::3]):
            skipped["no_keypoints"] += 1
        elif not (a["bbox"][2] > 0 and a["bbox"][3] > 0):
            skipped["zero_area"] += 1
        else:
            anns.append((n, a))
    return images, anns, skipped


class KeypointSet(torch.utils.data.Dataset):
    """Shared crop / augmentation logic (see the module docstring)."""

    def __init__(self, root: str | Path, contract: PreprocessContract, joint_set: str, *, train: bool = True,
                 augment: AugmentConfig | None = None, pgpg: PGPG | None = None, seed: int = 0,
                 model_joint_set: str | None = None) -> None:
        self.root, self.contract, self.joint_set = Path(root), contract, joint_set
        self.train, self.seed, self.epoch, self.pgpg = train, int(seed), 0, pgpg
        self.augment = augment if augment is not None else AugmentConfig(enabled=train)
        self.model_joint_set = model_joint_set or joint_set
        src, dst = get_joint_set(joint_set), get_joint_set(self.model_joint_set)
        n = min(src.num_joints, dst.num_joints)
        if src.names[:n] != dst.names[:n]:
            raise ValueError(f"joint sets {joint_set} and the model's {self.model_joint_set} do not share a prefix")
        # Halpe-136 annotations train a Halpe-26 model (its first 26 points); COCO-17 fills the
        # first 17 points of a Halpe model and the rest are unlabelled (label_mask 0).
        self.num_src, self.num_model = n, dst.num_joints
        self.flip_perm = dst.flip_permutation()
        self.skipped: dict[str, int] = {}
        self.samples: list[dict] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def _keep_existing(self, path_json: Path) -> None:
        kept, missing = [], set()
        for s in self.samples:
            if all((self.root / f).is_file() for f in s["files"]):
                kept.append(s)
            else:
                missing.update(str(self.root / f) for f in s["files"] if not (self.root / f).is_file())
        if missing:
            self.skipped["missing_image"] = len(self.samples) - len(kept)
            log.warning("%s: %d sample(s) skipped, image(s) missing: %s", path_json, len(self.samples) - len(kept),
                        ", ".join(sorted(missing)[:5]) + (" ..." if len(missing) > 5 else ""))
        self.samples = kept

    def _model_kps(self, kps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dataset keypoints (k, 3) -> model layout (K, 3) and label mask (K,)."""
        out = np.zeros((self.num_model, 3))
        out[:self.num_src] = kps[:self.num_src]
        mask = np.zeros(self.num_model, np.float32)
        mask[:self.num_src] = 1
        return out, mask

    def _decode(self, files: list[str]) -> list[np.ndarray] | None:
        out = []
        for f in files:
            im = cv2.imread(str(self.root / f), cv2.IMREAD_COLOR)
            if im is None:
                log.warning("%s: image does not decode; sample replaced by the next one", self.root / f)
                return None
            out.append(im)
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        for step in range(len(self.samples)):
            i = (index + step) % len(self.samples)
            s = self.samples[i]
            imgs = self._decode(s["files"])
            if imgs is not None:
                return self._make(index, s, imgs)
        raise RuntimeError(f"{self.root}: no image of this dataset decodes")

    def _make(self, index: int, s: dict, imgs: list[np.ndarray]) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        kps, mask = self._model_kps(s["kps"])
        box = s["box"]
        if self.train and self.pgpg is not None:
            box = self.pgpg.sample(box, kps, rng)
        m, flip = sample_affine(box, kps, self.contract, self.model_joint_set, self.augment, rng)
        joints, vis = apply_affine(kps, m, self.contract.crop_hw, self.flip_perm if flip else None)
        if flip:
            mask = mask[self.flip_perm]
        crops = warp_sample(imgs, m, self.contract.crop_hw)
        x = self.contract.normalize_numpy(np.stack(crops), rgb_input=False)
        out = {"image": torch.from_numpy(x[0]), "joints": torch.from_numpy(joints),
               "visible": torch.from_numpy(vis.astype(np.float32)), "label_mask": torch.from_numpy(mask),
               "affine": torch.from_numpy(m), "index": index}
        if len(crops) > 1:
            out["support"] = torch.from_numpy(x[1:])
        return out


class CocoKeypoints(KeypointSet):
    """COCO-17 / Halpe-26 / Halpe-136 keypoints JSON (layout chosen from the keypoint count
    unless ``joint_set`` is given)."""

    def __init__(self, ann_file: str | Path, image_root: str | Path, contract: PreprocessContract,
                 joint_set: str | None = None, **kw: Any) -> None:
        if joint_set is None:
            d = json.loads(Path(ann_file).read_text())
            first = next((a for a in d.get("annotations", []) if "keypoints" in a), None)
            if first is None:
                raise ValueError(f"{ann_file}: no annotation with 'keypoints'")
            k = len(first["keypoints"]) // 3
            if k not in _BY_K:
                raise ValueError(f"{ann_file}: {k} keypoints per person; expected 17, 26 or 136")
            joint_set = _BY_K[k]
        super().__init__(image_root, contract, joint_set, **kw)
        images, anns, self.skipped = load_keypoint_json(ann_file, get_joint_set(joint_set).num_joints)
        for n, a in anns:
            x, y, w, h = a["bbox"]
            self.samples.append({"files": [images[a["image_id"]]["file_name"]], "image_id": a["image_id"],
                                 "box": np.array([x, y, x + w, y + h], float), "ann": n,
                                 "kps": np.asarray(a["keypoints"], float).reshape(-1, 3)})
        self._keep_existing(Path(ann_file))


class PoseTrackKeypoints(KeypointSet):
    """PoseTrack18/21 video keypoints with FAMI-Pose's supporting frames."""

    def __init__(self, ann_file: str | Path, image_root: str | Path, contract: PreprocessContract,
                 offsets: tuple[int, ...] = (-2, -1, 1, 2), **kw: Any) -> None:
        super().__init__(image_root, contract, "posetrack17", **kw)
        images, anns, self.skipped = load_keypoint_json(ann_file, 17, require=("vid_id",))
        videos: dict[Any, list] = {}
        for im in images.values():
            videos.setdefault(im["vid_id"], []).append(im)
        pos = {}
        for vid, ims in videos.items():
            ims.sort(key=lambda im: (im.get("frame_id", 0), im["file_name"]))
            for p, im in enumerate(ims):
                pos[im["id"]] = (vid, p)
        for n, a in anns:
            if "track_id" not in a:
                raise ValueError(f"{ann_file}: annotations[{n}] missing field 'track_id'")
            vid, p = pos[a["image_id"]]
            frames = videos[vid]
            sup = supporting_indices(p, len(frames), offsets)
            x, y, w, h = a["bbox"]
            self.samples.append({"files": [frames[p]["file_name"]] + [frames[q]["file_name"] for q in sup],
                                 "image_id": a["image_id"], "track_id": a["track_id"], "ann": n,
                                 "box": np.array([x, y, x + w, y + h], float),
                                 "kps": np.asarray(a["keypoints"], float).reshape(-1, 3)})
        self._keep_existing(Path(ann_file))
