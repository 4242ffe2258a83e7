"""Last stage of ``poselift infer``: result files, the rendered MP4 and ``report.html``.

Per video ``DIR/<video>/``: ``poses3d.npz``, ``tracks/<track>.json``, ``alphapose-results.json``,
``render.mp4``; one ``DIR/report.html`` for the run. A video without any person still gets
every file (empty arrays / lists, a render of the plain frames, a note in the report).
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

from .outputs import TrackResult, write_alphapose_json, write_npz, write_track_json
from .render import TrackView, render_video, to_world_upright
from .report import write_report
from .sources import VideoInput, read_frames

__all__ = ["write_outputs"]

log = logging.getLogger(__name__)


def _label(t: TrackResult) -> str:
    """File-name-safe track name: the sequence id without its video prefix."""
    name = t.seq_id[len(t.video_id) + 1:] if t.seq_id.startswith(t.video_id + "/") else t.seq_id
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or f"track{t.track_id}"


def write_outputs(out: Path, videos: list[VideoInput], tracks: dict[str, list[TrackResult]],
                  settings: dict[str, Any], notes: list[str], timings: dict[str, float], o: Any,
                  joint_set_3d: str, overlays: dict[str, Any] | None = None) -> dict[str, str]:
    """``overlays``: per video a render hook (the TCMR meshes, ``tcmr_stage.mesh_overlay``)."""
    from poselift.core.progress import progress_bar

    paths: dict[str, str] = {}
    pages = []
    t_render = 0.0
    for v in videos:
        vt = tracks.get(v.video_id, [])
        d = out / v.video_id
        (d / "tracks").mkdir(parents=True, exist_ok=True)
        for old in (d / "tracks").glob("*.json"):  # a re-run with other tracks must not leave stale files
            old.unlink()
        meta = {"video": str(v.path), "image_size": list(v.size), "fps": v.fps, "n_frames": v.n_frames}
        files = {"3D poses (npz)": d / "poses3d.npz", "2D (AlphaPose JSON)": d / "alphapose-results.json"}
        write_npz(files["3D poses (npz)"], vt, meta, joint_set_3d)
        write_alphapose_json(files["2D (AlphaPose JSON)"], vt)
        for t in vt:
            p = d / "tracks" / f"{_label(t)}.json"
            write_track_json(p, t, meta)
            files[f"track {t.seq_id}"] = p
        if (d / "tcmr_output.pkl").exists():  # written by the TCMR stage of this run (--tcmr)
            files["SMPL meshes (TCMR/VIBE demo pkl)"] = d / "tcmr_output.pkl"
        if (d / "tracks.png").exists():  # written by the tracking stage when it ran here
            files["tracks over time (PNG)"] = d / "tracks.png"
        if not vt:
            notes.append(f"{v.video_id}: no person found in any frame: outputs written empty, nothing lifted")
        mp4 = web = None
        for old in ("render.mp4", "render.webm"):  # never leave a render of another run's poses
            (d / old).unlink(missing_ok=True)
        if o.render:
            t0 = time.perf_counter()
            mp4 = d / "render.mp4"
            views = [TrackView(_label(t), t.track_id, t.frames, t.detected, t.boxes, t.kp2d,
                               t.joint_set_2d, to_world_upright(t.joints3d), t.joint_set_3d) for t in vt]
            frames = progress_bar(read_frames(v), total=v.n_frames, unit="frame", progress=o.progress,
                                  desc=f"render {v.video_id}")
            web = render_video(frames, v.size, views, mp4, v.fps, height=o.render_height,
                               max_panels=o.max_panels, preview=d / "render.webm",
                               overlay=(overlays or {}).get(v.video_id))["preview"]
            t_render += time.perf_counter() - t0
            paths[f"{v.video_id}:mp4"] = str(mp4)
            if web is not None:
                paths[f"{v.video_id}:webm"] = str(web)
        if v.corrupt:
            notes.append(f"{v.path}: {len(v.corrupt)} unreadable frame(s) {v.corrupt[:10]}: reported, "
                         f"the rest processed")
        paths[f"{v.video_id}:npz"] = str(files["3D poses (npz)"])
        paths[f"{v.video_id}:alphapose"] = str(files["2D (AlphaPose JSON)"])
        paths[f"{v.video_id}:tracks"] = str(d / "tracks")
        pages.append({"video_id": v.video_id, "fps": v.fps, "n_frames": v.n_frames, "image_size": v.size,
                      "corrupt": list(v.corrupt), "mp4": mp4, "webm": web, "tracks": vt, "files": files})
    if o.render:
        timings["render_s"] = t_render
    for n in notes:
        log.warning("%s", n)
    report = out / "report.html"
    write_report(report, videos=pages, settings=settings, notes=notes)
    paths["report"] = str(report)
    return paths
