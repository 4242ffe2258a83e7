"""VideoPose3D data files (``data_3d_<ds>.npz``, ``data_2d_<ds>_<source>.npz``) -> caches.

One "gt" cache per 3D file and one "keypoints2d" cache per 2D source, joined by sequence
id ``<subject>/<action>/<camera>`` (camera = Human3.6M camera id, ``cam<i>`` otherwise).
What the reference loader does at training time is split here into what is stored
(camera-frame 3D, absolute, all joints; 2D in pixels truncated to the mocap length) and
what stays a training-time step (root-relative targets, screen normalisation).

Everything is validated before the first sequence is written, so a bad input never
leaves a half-written cache; errors name the file, subject, action and camera.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from ..cache import CacheHeader, CacheWriter
from ..cameras import CAMERA_JSON, Camera, camera_json_sha256, load_cameras
from .safe_npz import sha256_file
from .videopose3d_files import (DATASETS, LAYOUTS, DatasetSpec, Source2D, VideoPose3DImportError,
                                check_finite, get_spec, read_positions_2d, read_positions_3d,
                                source_name)

__all__ = ["import_videopose3d", "ImportReport", "VideoPose3DImportError", "DATASETS", "LAYOUTS",
           "DatasetSpec", "Source2D", "read_positions_2d", "read_positions_3d", "source_name"]

OnlyIn2D = Literal["error", "keep", "skip"]


@dataclass
class ImportReport:
    gt_path: Path | None = None
    keypoint_paths: dict[str, Path] = field(default_factory=dict)
    sequences: int = 0
    frames: int = 0
    discarded: list[str] = field(default_factory=list)
    only_in_2d: dict[str, list[str]] = field(default_factory=dict)  # source -> subject/action
    truncated: dict[str, int] = field(default_factory=dict)         # source -> sequences cut

    def summary(self) -> str:
        lines = [f"{self.sequences} sequences per cache, {self.frames} frames"]
        if self.gt_path:
            lines.append(f"gt cache: {self.gt_path}")
        lines += [f"2D cache [{k}]: {p}" for k, p in self.keypoint_paths.items()]
        if self.discarded:
            lines.append(f"discarded (known corrupt): {', '.join(self.discarded)}")
        for src, items in self.only_in_2d.items():
            lines.append(f"[{src}] {len(items)} subject/action pair(s) only in 2D: "
                         f"{', '.join(items[:8])}{' ...' if len(items) > 8 else ''}")
        for src, n in self.truncated.items():
            lines.append(f"[{src}] {n} 2D sequence(s) truncated to the mocap length")
        return "\n".join(lines)


# --- planning ---------------------------------------------------------------------------------
@dataclass
class _Seq:
    subject: str
    action: str
    index: int
    camera: Camera | None
    seq_id: str
    attrs: dict[str, Any]


def _camera_attrs(spec: DatasetSpec, cam: Camera | None, index: int, size: list[int],
                  subject: str, action: str) -> tuple[str, dict[str, Any]]:
    cam_name = cam.id if (spec.camera_id_in_seq and cam is not None) else f"cam{index}"
    attrs: dict[str, Any] = {"subject": subject, "action": action, "camera": cam_name,
                             "camera_index": index, "fps": spec.fps, "image_size": size}
    if cam is not None:
        attrs["camera_params"] = cam.to_attrs()
    return f"{subject}/{action}/{cam_name}", attrs


def _plan_3d(spec: DatasetSpec, path: Path, data: dict[str, dict[str, np.ndarray]],
             cameras: dict[str, list[Camera]]) -> list[_Seq]:
    plan = []
    for subject, actions in data.items():
        cams = cameras.get(subject)
        if cams is None or not all(c.has_extrinsics for c in cams):
            raise VideoPose3DImportError(
                f"{path}: subject {subject!r} has no camera extrinsics in {CAMERA_JSON.name} "
                f"(known: {sorted(s for s, c in cameras.items() if c[0].has_extrinsics)})")
        for action in actions:
            for cam in cams:
                sid, attrs = _camera_attrs(spec, cam, cam.index, cam.image_size, subject, action)
                plan.append(_Seq(subject, action, cam.index, cam, sid, attrs))
    return plan


def _plan_2d_only(spec: DatasetSpec, src: Source2D, pairs: list[tuple[str, str]],
                  cameras: dict[str, list[Camera]], n_cams: int | None) -> list[_Seq]:
    """Sequences of subject/action pairs without 3D (HumanEva "Unlabeled/...", custom)."""
    plan = []
    videos = src.metadata.get("video_metadata")
    for subject, action in pairs:
        cam_list = src.positions[subject][action]
        if n_cams is not None and len(cam_list) != n_cams:
            raise VideoPose3DImportError(f"{src.path}: subject {subject!r}, action {action!r} has "
                                         f"{len(cam_list)} cameras, {spec.name} has {n_cams}")
        for i, kp in enumerate(cam_list):
            if kp is None:
                continue
            check_finite(kp, f"{src.path}: subject {subject!r}, action {action!r}, camera {i}")
            cam = cameras[subject][i] if subject in cameras else None
            if spec.name == "custom":
                if not isinstance(videos, dict) or subject not in videos:
                    raise VideoPose3DImportError(f"{src.path}: video {subject!r} has no entry in "
                                                 f"metadata['video_metadata'] (needs w, h)")
                size = [int(videos[subject]["w"]), int(videos[subject]["h"])]
            else:
                # Resolution depends only on the camera index (intrinsics are per camera).
                size = next(iter(cameras.values()))[i].image_size
            sid, attrs = _camera_attrs(spec, cam, i, size, subject, action)
            plan.append(_Seq(subject, action, i, cam, sid, attrs))
    return plan


def _check_2d_covers_3d(src: Source2D, data: dict[str, dict[str, np.ndarray]],
                        n_cams: int) -> int:
    """Reference checks: every 3D subject/action is in the 2D file with one array per
    camera, none shorter than the mocap. Returns how many will be truncated."""
    truncated = 0
    for subject, actions in data.items():
        if subject not in src.positions:
            raise VideoPose3DImportError(f"{src.path}: subject {subject!r} of the 3D file is "
                                         f"missing from the 2D file")
        for action, pos in actions.items():
            cams = src.positions[subject].get(action)
            if cams is None:
                raise VideoPose3DImportError(f"{src.path}: action {action!r} of subject "
                                             f"{subject!r} is missing from the 2D file")
            if len(cams) != n_cams:
                raise VideoPose3DImportError(f"{src.path}: subject {subject!r}, action {action!r} "
                                             f"has {len(cams)} cameras, the 3D data {n_cams}")
            for i, kp in enumerate(cams):
                where = f"{src.path}: subject {subject!r}, action {action!r}, camera {i}"
                if kp is None:
                    raise VideoPose3DImportError(f"{where}: camera is missing (None)")
                if len(kp) < len(pos):
                    raise VideoPose3DImportError(f"{where}: 2D has {len(kp)} frames, shorter than "
                                                 f"the 3D's {len(pos)}")
                truncated += len(kp) > len(pos)
                check_finite(kp[:len(pos)], where)
    return truncated


# --- writing ----------------------------------------------------------------------------------
def _fingerprint(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for k in sorted(files):
        h.update(f"{k}={files[k]};".encode())
    return h.hexdigest()


def import_videopose3d(data_3d: str | os.PathLike | None, data_2d: Sequence[str | os.PathLike],
                       dataset: str, out_dir: str | os.PathLike, *, joint_set: str | None = None,
                       only_in_2d: OnlyIn2D = "error", trust_pickle: bool = False,
                       overwrite: bool = False) -> ImportReport:
    """Import VideoPose3D files into ``out_dir``: ``<ds>_3d.h5`` ("gt") and one
    ``<ds>_<source>.h5`` ("keypoints2d") per 2D file. Re-running resumes; a changed input
    (sha256) is refused unless ``overwrite``.

    ``only_in_2d`` decides about 2D subject/action pairs without 3D: "error", "keep"
    (import them as 2D-only sequences, e.g. HumanEva's ``Unlabeled/*``) or "skip".
    ``joint_set`` is the 2D layout the caller expects; a file with another is refused.
    """
    spec, out, report = get_spec(dataset), Path(out_dir), ImportReport()
    if only_in_2d not in ("error", "keep", "skip"):
        raise VideoPose3DImportError(f"only_in_2d must be error/keep/skip, got {only_in_2d!r}")
    if (data_3d is None) != (spec.raw_joints is None):
        raise VideoPose3DImportError(f"dataset {dataset!r} " + ("needs a 3D file (--data-3d)"
                                     if data_3d is None else "takes no 3D file"))
    if not data_2d and data_3d is None:
        raise VideoPose3DImportError("nothing to import: give --data-3d and/or --data-2d")
    cameras = load_cameras(dataset) if dataset != "custom" else {}
    n_cams = len(next(iter(cameras.values()))) if cameras else None
    files = {} if dataset == "custom" else {CAMERA_JSON.name: camera_json_sha256()}
    data: dict[str, dict[str, np.ndarray]] = {}
    plan3d: list[_Seq] = []
    if data_3d is not None:
        p3 = Path(data_3d)
        data, report.discarded = read_positions_3d(p3, dataset, trust_pickle=trust_pickle)
        plan3d = _plan_3d(spec, p3, data, cameras)
        files[p3.name] = sha256_file(p3)
    sources, plans2d = [], []
    for p in data_2d:
        src = read_positions_2d(p, dataset, joint_set=joint_set, trust_pickle=trust_pickle)
        if src.name in {s.name for s in sources}:
            raise VideoPose3DImportError(f"{src.path}: a 2D source named {src.name!r} was given twice")
        for subject, action in spec.discard:  # same corrupt take as in the 3D file
            src.positions.get(subject, {}).pop(action, None)
        report.truncated[src.name] = _check_2d_covers_3d(src, data, n_cams) if data else 0
        extra = [(s, a) for s, acts in src.positions.items() for a in acts
                 if a not in data.get(s, {})]
        if extra and data:
            report.only_in_2d[src.name] = [f"{s}/{a}" for s, a in extra]
            if only_in_2d == "error":
                raise VideoPose3DImportError(
                    f"{src.path}: {len(extra)} subject/action pair(s) have 2D but no 3D: "
                    f"{report.only_in_2d[src.name][:8]}; use only_in_2d='keep' (--only-2d keep) to "
                    f"import them without ground truth, or 'skip' to leave them out")
        keep_extra = extra if (only_in_2d == "keep" or not data) else []
        plans2d.append(plan3d + _plan_2d_only(spec, src, keep_extra, cameras, n_cams))
        sources.append(src)

    out.mkdir(parents=True, exist_ok=True)
    if data_3d is not None:
        report.gt_path = out / f"{dataset}_3d.h5"
        hdr = CacheHeader(kind="gt", dataset=dataset, joint_set=spec.joint_set,
                          source={"importer": "videopose3d", "files": dict(files)},
                          inputs_fingerprint=_fingerprint(files),
                          extra={"discarded": report.discarded, "coordinates": "camera frame, "
                                 "absolute (root not subtracted)",
                                 "raw_joints_kept": list(spec.keep) if spec.keep else None})
        with CacheWriter(report.gt_path, hdr, overwrite=overwrite) as w:
            for s in plan3d:
                if w.has(s.seq_id):
                    continue
                world = data[s.subject][s.action]
                cam3d = s.camera.world_to_camera(world).astype(np.float32)
                w.write_sequence(s.seq_id, {"joints_3d": cam3d, "joints_3d_world": world,
                                            "frame_index": np.arange(len(world), dtype=np.int64)},
                                 s.attrs)
    for src, plan in zip(sources, plans2d):
        src_files = dict(files, **{src.path.name: sha256_file(src.path)})
        path = out / f"{dataset}_{src.name}.h5"
        hdr = CacheHeader(kind="keypoints2d", dataset=dataset, joint_set=src.joint_set,
                          source={"importer": "videopose3d", "keypoints": src.name,
                                  "files": src_files},
                          inputs_fingerprint=_fingerprint(src_files),
                          extra={"keypoints_symmetry": src.symmetry,
                                 "layout_name": src.metadata.get("layout_name"),
                                 "coordinates": "pixels (normalise at training time)"})
        with CacheWriter(path, hdr, overwrite=overwrite) as w:
            for s in plan:
                if w.has(s.seq_id):
                    continue
                kp = src.positions[s.subject][s.action][s.index]
                n = len(data[s.subject][s.action]) if s.action in data.get(s.subject, {}) else len(kp)
                w.write_sequence(s.seq_id, {"keypoints": kp[:n],
                                            "frame_index": np.arange(n, dtype=np.int64)},
                                 dict(s.attrs, source_n_frames=len(kp)))
        report.keypoint_paths[src.name] = path
    ref_plan = plan3d if data_3d is not None else (plans2d[0] if plans2d else [])
    report.sequences = len(ref_plan)
    report.frames = sum(len(data[s.subject][s.action]) if data else
                        len(sources[0].positions[s.subject][s.action][s.index]) for s in ref_plan)
    return report
