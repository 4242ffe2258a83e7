"""``report.html``: one self-contained page per run (the rendered video embedded as a data URI
when small enough, else linked; per-track tables and inline SVG plots; no scripts, no
network), so it opens anywhere, including a headless browser in the tests."""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np

from .outputs import TrackResult

__all__ = ["write_report", "EMBED_LIMIT"]

EMBED_LIMIT = 25 * 1024 * 1024  # larger videos are linked, not embedded


def _svg_lines(series: dict[str, tuple[np.ndarray, np.ndarray]], title: str, unit: str,
               w: int = 520, h: int = 160) -> str:
    """A small line plot: {label: (x, y)} -> inline SVG."""
    pts = [(np.asarray(x, float), np.asarray(y, float)) for x, y in series.values()]
    ok = [(x[np.isfinite(y)], y[np.isfinite(y)]) for x, y in pts]
    if not any(len(x) for x, _ in ok):
        return f"<p>{html.escape(title)}: no data</p>"
    xs = np.concatenate([x for x, _ in ok]); ys = np.concatenate([y for _, y in ok])
    x0, x1 = float(xs.min()), float(max(xs.max(), xs.min() + 1))
    y0, y1 = float(ys.min()), float(ys.max())
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    sx = lambda v: 40 + (v - x0) / (x1 - x0) * (w - 50)  # noqa: E731
    sy = lambda v: h - 20 - (v - y0) / (y1 - y0) * (h - 40)  # noqa: E731
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" class="plot">',
             f'<rect width="{w}" height="{h}" fill="#fff" stroke="#ccc"/>',
             f'<text x="40" y="14" font-size="12">{html.escape(title)} ({html.escape(unit)})</text>',
             f'<text x="2" y="{sy(y1) + 4:.0f}" font-size="10">{y1:.3g}</text>',
             f'<text x="2" y="{sy(y0) + 4:.0f}" font-size="10">{y0:.3g}</text>',
             f'<text x="40" y="{h - 4}" font-size="10">frame {x0:.0f}</text>',
             f'<text x="{w - 70}" y="{h - 4}" font-size="10">frame {x1:.0f}</text>']
    for k, ((label, _), (x, y)) in enumerate(zip(series.items(), ok)):
        d = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(x, y))
        c = colors[k % len(colors)]
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{d}"/>')
        parts.append(f'<text x="{w - 150}" y="{14 + 12 * k}" font-size="11" fill="{c}">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _track_stats(t: TrackResult, fps: float) -> dict[str, Any]:
    d = t.detected
    speed = np.linalg.norm(np.diff(t.joints3d[:, 0], axis=0), axis=-1) * (fps or 25.0) if len(t.frames) > 1 else np.zeros(0)
    return {"frames": f"{int(t.frames[0])}–{int(t.frames[-1])}", "length": len(t.frames),
            "detected": int(d.sum()), "interpolated": int((~d).sum()),
            "mean 2D score": f"{float(t.scores2d[d].mean()) if d.any() else float('nan'):.3f}",
            "root speed max (m/s)": f"{float(speed.max()) if speed.size else 0.0:.2f}" if not t.root_relative else "–",
            "3D extent (m)": f"{float(np.ptp(t.joints3d.reshape(-1, 3), axis=0).max()):.2f}"}


def write_report(path: Path, *, videos: list[dict[str, Any]], settings: dict[str, Any],
                 notes: list[str]) -> None:
    """``videos``: [{"video_id", "fps", "n_frames", "image_size", "corrupt", "mp4" / "webm" (Path or None),
    "tracks": [TrackResult], "files": {label: Path}}]."""
    out = ['<!DOCTYPE html><html><head><meta charset="utf-8"><title>poselift infer report</title>',
           "<style>body{font-family:sans-serif;margin:20px;max-width:1200px}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#f0f0f0}"
           "video{max-width:100%}.note{color:#a05000}</style></head><body>",
           "<h1>poselift infer</h1>",
           "<table id=\"settings\">" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                                             for k, v in settings.items()) + "</table>"]
    for n in notes:
        out.append(f'<p class="note">{html.escape(n)}</p>')
    for v in videos:
        vid = html.escape(v["video_id"])
        out.append(f'<h2 id="video-{vid}">{vid}</h2><p>{v["n_frames"]} frames, {v["image_size"][0]}×'
                   f'{v["image_size"][1]} px, {v["fps"]:.2f} fps, {len(v["tracks"])} track(s)</p>')
        if v.get("corrupt"):
            out.append(f'<p class="note">unreadable frames (skipped): {v["corrupt"][:20]}'
                       f'{" …" if len(v["corrupt"]) > 20 else ""}</p>')
        mp4, web = v.get("mp4"), v.get("webm")
        # Browsers play the WebM twin (VP8); the MP4 (MPEG-4 part 2) is for players and editors.
        show, kind = (web, "webm") if web is not None and Path(web).exists() else (mp4, "mp4")
        if show is not None and Path(show).exists() and Path(show).stat().st_size <= EMBED_LIMIT:
            data = base64.b64encode(Path(show).read_bytes()).decode()
            out.append(f'<video controls muted src="data:video/{kind};base64,{data}"></video>')
        links = [(n, p) for n, p in (("rendered video (MP4)", mp4), ("browser preview (WebM)", web))
                 if p is not None and Path(p).exists()]
        if links:
            out.append("<p>" + " · ".join(f'<a href="{html.escape(str(Path(p).relative_to(path.parent)))}">{n}</a>'
                                          for n, p in links) + "</p>")
        if not v["tracks"]:
            out.append('<p class="note">No person was found in this video: nothing to lift.</p>')
            continue
        stats = [_track_stats(t, v["fps"]) for t in v["tracks"]]
        cols = list(stats[0])
        out.append('<table class="tracks"><tr><th>track</th>' + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>")
        for t, s in zip(v["tracks"], stats):
            out.append(f'<tr><td>{html.escape(t.seq_id)}</td>' + "".join(f"<td>{html.escape(str(s[c]))}</td>" for c in cols) + "</tr>")
        out.append("</table>")
        for t in v["tracks"]:
            out.append(f'<h3 class="track">{html.escape(t.seq_id)}</h3>')
            height = t.joints3d[..., 1].max(-1) - t.joints3d[..., 1].min(-1)
            series = {"body height (y extent)": (t.frames, height)}
            if not t.root_relative:  # with a trajectory model the root's depth is a prediction too
                series["root depth z"] = (t.frames, t.joints3d[:, 0, 2])
            out.append(_svg_lines(series, "3D", "m"))
            sc = np.where(t.detected, t.scores2d.mean(-1), np.nan)
            out.append(_svg_lines({"mean keypoint score": (t.frames, sc)}, "2D confidence", "1"))
        files = v.get("files") or {}
        for p in files.values():
            if Path(p).suffix == ".png" and Path(p).exists():
                out.append(f'<img alt="tracks over time" src="data:image/png;base64,'
                           f'{base64.b64encode(Path(p).read_bytes()).decode()}">')
        if files:
            out.append("<ul>" + "".join(f'<li>{html.escape(k)}: <a href="{html.escape(str(Path(p).relative_to(path.parent)))}">'
                                        f"{html.escape(Path(p).name)}</a></li>" for k, p in files.items()) + "</ul>")
    out.append("</body></html>")
    path.write_text("\n".join(out), encoding="utf-8")
