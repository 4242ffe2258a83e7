"""Multi-person tracking across frames: box IoU + pose OKS (+ optional appearance), Hungarian.

Each live track predicts its box (and keypoints) in the current frame with a constant-velocity
model; every (track, detection) pair gets a similarity = weighted mean of the terms available
for it:

* ``iou``: IoU of the predicted box with the detection box;
* ``pose``: OKS of the track's last keypoints with the detected ones, each taken relative to its
  own box centre (COCO-17 sigmas, k = 2 sigma, scale^2 = area of the predicted box; only joints
  confident in both; missing when none). Position is the IoU term's job: aligning the centres
  keeps a few pixels of box jitter from swamping the difference between two poses (the face
  joints' sigmas are tiny), which is what separates people standing in the same place;
* ``appearance``: cosine similarity (clipped at 0) of an exponential moving average of the
  track's crop feature vectors with the detection's (the re-identification idea of AlphaPose's
  pose tracker); only when features are given.

A pair is admissible only if the boxes overlap (IoU > ``min_iou``) or its appearance similarity
reaches ``reid_similarity`` (re-identification of someone who moved or came back elsewhere).
Admissible pairs are assigned by the Hungarian method (``scipy.optimize.linear_sum_assignment``)
and kept when their similarity >= ``min_similarity``. A new track is tentative until it has ``min_hits``
matched detections (a tentative track missed in one frame is dropped, so flickering false
positives never get an id); confirmed tracks survive up to ``max_age`` frames without a match,
then end (a person who comes back later gets a new id unless appearance re-identifies them
first). Gaps of at most ``max_gap`` missing frames inside a track are filled by linear
interpolation of boxes and keypoints and marked ``interpolated``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..datasets.joints import COCO17_SIGMAS

if TYPE_CHECKING:  # imported where used: ``import poselift.extract`` stays free of scipy
    from .detections import VideoDetections

__all__ = ["TrackerParams", "Track", "TrackingResult", "PoseTracker", "track_people",
           "box_iou_matrix", "oks_matrix", "plot_tracks"]


@dataclass(frozen=True)
class TrackerParams:
    """Association and lifetime parameters (see the module docstring)."""

    iou_weight: float = 1.0
    pose_weight: float = 1.0
    appearance_weight: float = 1.0  # used only where both sides have a feature vector
    min_similarity: float = 0.3
    min_iou: float = 0.0            # a pair needs IoU > min_iou ...
    reid_similarity: float = 0.7    # ... or an appearance similarity >= this
    min_hits: int = 3               # birth: matched detections before a track gets an id
    max_age: int = 30               # death: frames a confirmed track may go unmatched
    max_gap: int = 10               # longest run of missing frames filled by interpolation
    kp_thresh: float = 0.3          # keypoint confidence for a joint to count in OKS
    motion: bool = True             # constant-velocity prediction of box and keypoints
    velocity_smoothing: float = 0.5  # weight of the previous velocity in its update
    feature_momentum: float = 0.9   # weight of the track's old feature in its moving average

    def __post_init__(self) -> None:
        if min(self.iou_weight, self.pose_weight, self.appearance_weight) < 0:
            raise ValueError("TrackerParams: weights must be >= 0")
        if self.min_hits < 1 or self.max_age < 0 or self.max_gap < 0:
            raise ValueError(f"TrackerParams: need min_hits >= 1, max_age >= 0, max_gap >= 0, got "
                             f"{self.min_hits}, {self.max_age}, {self.max_gap}")
        if not (0 <= self.velocity_smoothing < 1 and 0 <= self.feature_momentum < 1):
            raise ValueError("TrackerParams: velocity_smoothing and feature_momentum must be in [0, 1)")


@dataclass
class Track:
    """One confirmed person over time. T rows, one per frame covered (gaps > max_gap absent).

    frames (T,) int64 increasing; boxes (T, 4) float32 xyxy; scores (T,) float32 detector score
    (0 where interpolated); keypoints (T, J, 3) float32 (x, y, conf) or None; det_index (T,)
    int64 index of the detection within its frame (-1 where interpolated); interpolated (T,) bool.
    """

    track_id: int
    frames: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray | None
    det_index: np.ndarray
    interpolated: np.ndarray


@dataclass
class TrackingResult:
    """track_ids[f]: (K_f,) int64 id of each input detection of frame f (-1 = in no confirmed
    track); tracks: id -> :class:`Track`, ids 0, 1, ... in order of confirmation."""

    track_ids: list[np.ndarray]
    tracks: dict[int, Track]
    num_frames: int

    def to_video_detections(self, video_id: str, source: str | os.PathLike,
                            frame_index: np.ndarray | None = None, include_interpolated: bool = True,
                            attrs: dict | None = None) -> VideoDetections:
        """The confirmed tracks as :class:`~poselift.extract.detections.VideoDetections` (the
        flat per-box form the extraction caches use), rows sorted by frame then track id.

        Detections in no confirmed track are left out. Interpolated rows (included by default,
        so the 2D stage also runs on the filled frames) carry score 0, which no detection kept
        by a positive confidence threshold has; ``attrs["interpolated_rows"]`` counts them.
        ``frame_index`` maps tracker frames to source frame numbers (default 0..F-1).
        """
        from .detections import VideoDetections

        fi = np.arange(self.num_frames) if frame_index is None else np.asarray(frame_index, np.int64)
        if len(fi) != self.num_frames:
            raise ValueError(f"video {video_id!r}: {len(fi)} frame numbers for {self.num_frames} frames")
        pos, boxes, scores, ids = [np.zeros(0, np.int64)], [np.zeros((0, 4), np.float32)], \
            [np.zeros(0, np.float32)], [np.zeros(0, np.int64)]
        for tid, tr in self.tracks.items():
            rows = np.ones(len(tr.frames), bool) if include_interpolated else ~tr.interpolated
            pos.append(tr.frames[rows])
            boxes.append(tr.boxes[rows])
            scores.append(tr.scores[rows])
            ids.append(np.full(int(rows.sum()), tid, np.int64))
        pos_a, ids_a = np.concatenate(pos), np.concatenate(ids)
        order = np.lexsort((ids_a, pos_a))
        scores_a = np.concatenate(scores)[order]
        extra = {"tracker": "poselift.extract.tracking", "interpolated_rows": int((scores_a == 0).sum())}
        return VideoDetections(video_id, source, fi, pos_a[order], np.concatenate(boxes)[order],
                               scores_a, ids_a[order], False, {**extra, **dict(attrs or {})})


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(T, 4) x (K, 4) xyxy -> (T, K) IoU (0 for degenerate pairs)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def oks_matrix(kp_a: np.ndarray, kp_b: np.ndarray, areas: np.ndarray, sigmas: np.ndarray,
               kp_thresh: float, centres_a: np.ndarray | None = None,
               centres_b: np.ndarray | None = None) -> np.ndarray:
    """(T, J, 3) x (K, J, 3) keypoints, (T,) scale areas -> (T, K) OKS, NaN where no joint is
    confident (>= kp_thresh) on both sides. OKS = mean over those joints of
    exp(-d^2 / (2 area (2 sigma)^2)), as COCO's keypoint evaluation; joints whose sigma is
    not finite are left out. With centres (T, 2) / (K, 2), coordinates are relative to them."""
    a = kp_a[..., :2] - (0 if centres_a is None else centres_a[:, None, :])
    b = kp_b[..., :2] - (0 if centres_b is None else centres_b[:, None, :])
    d2 = np.sum((a[:, None] - b[None, :]) ** 2, axis=-1)  # (T, K, J)
    e = d2 / (2.0 * (2.0 * sigmas) ** 2 * (areas[:, None, None] + np.finfo(float).eps))
    vis = (kp_a[:, None, :, 2] >= kp_thresh) & (kp_b[None, :, :, 2] >= kp_thresh)
    vis &= np.isfinite(sigmas)[None, None, :]  # joints without a sigma do not count
    n = vis.sum(-1)
    total = np.where(vis, np.exp(-e), 0.0).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / n, np.nan)


@dataclass
class _State:
    box: np.ndarray
    kps: np.ndarray | None
    feat: np.ndarray | None
    last: int
    obs: list[tuple[int, int]] = field(default_factory=list)  # (frame, det index)
    vel: np.ndarray = field(default_factory=lambda: np.zeros(4))
    hits: int = 1
    track_id: int = -1


class PoseTracker:
    """Online association frame by frame; :meth:`result` builds the tracks (ids are final only
    then, since a tentative track's first detections get its id when it is confirmed)."""

    def __init__(self, params: TrackerParams | None = None, sigmas: np.ndarray | None = None) -> None:
        self.p = params or TrackerParams()
        self.sigmas = None if sigmas is None else np.asarray(sigmas, np.float64)
        self.live: list[_State] = []
        self.done: list[_State] = []
        self.frame = 0
        self.next_id = 0
        self._boxes: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._kps: list[np.ndarray | None] = []

    def _sigmas(self, j: int) -> np.ndarray:
        if self.sigmas is not None:
            if len(self.sigmas) != j:
                raise ValueError(f"tracker: {len(self.sigmas)} OKS sigmas for {j} keypoints")
            return self.sigmas
        if j < 17:
            raise ValueError(f"tracker: {j} keypoints; pass sigmas for a layout other than COCO-17")
        # COCO-17 first (COCO, Halpe-26/136 order); extra joints have no COCO sigma: left out.
        return np.concatenate([COCO17_SIGMAS, np.full(j - 17, np.inf)])

    def update(self, boxes: np.ndarray, keypoints: np.ndarray | None = None,
               features: np.ndarray | None = None, scores: np.ndarray | None = None) -> None:
        """Add frame ``self.frame``: boxes (K, 4) xyxy, keypoints (K, J, 2|3), features (K, D)."""
        f, p = self.frame, self.p
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        k = len(boxes)
        if k == 0:  # nothing to associate; accept any empty placeholder ([] or (0, J, 3))
            keypoints = features = None
        if keypoints is not None:
            keypoints = np.asarray(keypoints, np.float64)
            if keypoints.ndim != 3 or len(keypoints) != k or keypoints.shape[2] not in (2, 3):
                raise ValueError(f"tracker frame {f}: keypoints {keypoints.shape} for {k} boxes, "
                                 f"expected ({k}, J, 2 or 3)")
            if keypoints.shape[2] == 2:
                keypoints = np.concatenate([keypoints, np.ones(keypoints.shape[:2] + (1,))], 2)
        if features is not None:
            features = np.asarray(features, np.float64)
            if features.ndim != 2 or len(features) != k:
                raise ValueError(f"tracker frame {f}: features {features.shape} for {k} boxes, "
                                 f"expected ({k}, D)")
            features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        scores = np.ones(k) if scores is None else np.asarray(scores, np.float64).reshape(k)
        self._boxes.append(boxes.astype(np.float32))
        self._scores.append(scores.astype(np.float32))
        self._kps.append(None if keypoints is None else keypoints.astype(np.float32))

        # Death: confirmed tracks past max_age, tentative tracks missed once.
        keep = []
        for t in self.live:
            gone = f - t.last > (p.max_age + 1 if t.track_id >= 0 else 1)
            (self.done if gone else keep).append(t)
        self.live = keep

        matched_det = np.zeros(k, bool)
        if self.live and k:
            from scipy.optimize import linear_sum_assignment

            sim = self._similarity(boxes, keypoints, features)
            rows, cols = linear_sum_assignment(-np.nan_to_num(sim, nan=-1.0))
            for r, c in zip(rows, cols):
                if sim[r, c] >= p.min_similarity:  # False for NaN (inadmissible)
                    self._extend(self.live[r], c, boxes[c], keypoints, features)
                    matched_det[c] = True
        for c in np.where(~matched_det)[0]:
            t = _State(boxes[c], None if keypoints is None else keypoints[c],
                       None if features is None else features[c], f, [(f, int(c))])
            self.live.append(t)
            self._confirm(t)
        self.frame += 1

    def _similarity(self, boxes, keypoints, features) -> np.ndarray:
        p, f = self.p, self.frame
        dt = np.array([f - t.last for t in self.live], np.float64)
        vel = np.stack([t.vel for t in self.live]) if p.motion else np.zeros((len(self.live), 4))
        pred = np.stack([t.box for t in self.live]) + vel * dt[:, None]
        terms, weights = [box_iou_matrix(pred, boxes)], [p.iou_weight]
        if keypoints is not None and p.pose_weight > 0:
            j = keypoints.shape[1]
            kp_t = np.zeros((len(self.live), j, 3))
            kp_t[..., 2] = -np.inf  # a track without a pose of this layout: no joint visible
            last = np.stack([t.box for t in self.live])
            for i, t in enumerate(self.live):
                if t.kps is not None and t.kps.shape[0] == j:
                    kp_t[i] = t.kps
            area = np.prod(np.clip(pred[:, 2:] - pred[:, :2], 0, None), axis=1)
            centre = lambda b: 0.5 * (b[:, :2] + b[:, 2:])  # noqa: E731
            terms.append(oks_matrix(kp_t, keypoints, area, self._sigmas(j), p.kp_thresh,
                                    centre(last), centre(boxes)))
            weights.append(p.pose_weight)
        app = np.full((len(self.live), len(boxes)), np.nan)
        if features is not None and p.appearance_weight > 0:
            for i, t in enumerate(self.live):
                if t.feat is not None and t.feat.shape[0] == features.shape[1]:
                    app[i] = np.clip(features @ t.feat / max(np.linalg.norm(t.feat), 1e-12), 0, None)
            terms.append(app)
            weights.append(p.appearance_weight)
        stack = np.stack(terms)  # (n_terms, T, K)
        w = np.asarray(weights)[:, None, None] * ~np.isnan(stack)
        with np.errstate(invalid="ignore", divide="ignore"):
            sim = np.where(w.sum(0) > 0, (np.nan_to_num(stack) * w).sum(0) / w.sum(0), 0.0)
        admissible = (terms[0] > p.min_iou) | (np.nan_to_num(app, nan=-1.0) >= p.reid_similarity)
        return np.where(admissible, sim, np.nan)

    def _extend(self, t: _State, c: int, box, keypoints, features) -> None:
        p, f = self.p, self.frame
        v = (box - t.box) / (f - t.last)
        t.vel = v if t.hits == 1 else p.velocity_smoothing * t.vel + (1 - p.velocity_smoothing) * v
        t.box, t.last, t.hits = box, f, t.hits + 1
        t.obs.append((f, int(c)))
        if keypoints is not None:
            t.kps = keypoints[c]
        if features is not None:
            t.feat = (features[c] if t.feat is None
                      else p.feature_momentum * t.feat + (1 - p.feature_momentum) * features[c])
        self._confirm(t)

    def _confirm(self, t: _State) -> None:
        if t.track_id < 0 and t.hits >= self.p.min_hits:
            t.track_id, self.next_id = self.next_id, self.next_id + 1

    def result(self) -> TrackingResult:
        """Per-detection ids and the confirmed tracks with short gaps interpolated."""
        ids = [np.full(len(b), -1, np.int64) for b in self._boxes]
        tracks: dict[int, Track] = {}
        for t in sorted((t for t in self.done + self.live if t.track_id >= 0), key=lambda s: s.track_id):
            for fr, c in t.obs:
                ids[fr][c] = t.track_id
            tracks[t.track_id] = self._build(t)
        return TrackingResult(ids, tracks, len(self._boxes))

    def _build(self, t: _State) -> Track:
        fr = np.array([o[0] for o in t.obs], np.int64)
        di = np.array([o[1] for o in t.obs], np.int64)
        boxes = np.stack([self._boxes[a][c] for a, c in t.obs]).astype(np.float64)
        scores = np.array([self._scores[a][c] for a, c in t.obs], np.float32)
        has_kp = all(self._kps[a] is not None for a, _ in t.obs)
        kps = np.stack([self._kps[a][c] for a, c in t.obs]).astype(np.float64) if has_kp else None
        # every frame from first to last except inside gaps longer than max_gap
        frames = [fr[0]]
        for a, b in zip(fr[:-1], fr[1:]):
            if b - a - 1 <= self.p.max_gap:
                frames.extend(range(a + 1, b))
            frames.append(b)
        frames = np.asarray(frames, np.int64)
        obs_at = np.searchsorted(fr, frames)
        observed = (obs_at < len(fr)) & (fr[np.minimum(obs_at, len(fr) - 1)] == frames)
        interp = lambda v: np.stack([np.interp(frames, fr, col) for col in v.reshape(len(fr), -1).T],  # noqa: E731
                                    1).reshape((len(frames),) + v.shape[1:])
        out_kps = interp(kps).astype(np.float32) if kps is not None else None
        out_scores = np.zeros(len(frames), np.float32)
        out_scores[observed] = scores
        out_di = np.full(len(frames), -1, np.int64)
        out_di[observed] = di
        return Track(t.track_id, frames, interp(boxes).astype(np.float32), out_scores, out_kps,
                     out_di, ~observed)


def track_people(boxes: Sequence[np.ndarray], keypoints: Sequence[np.ndarray] | None = None,
                 features: Sequence[np.ndarray] | None = None, scores: Sequence[np.ndarray] | None = None,
                 params: TrackerParams | None = None, sigmas: np.ndarray | None = None) -> TrackingResult:
    """Track people over a video: per frame f, boxes[f] (K_f, 4) xyxy, keypoints[f] (K_f, J, 2|3),
    features[f] (K_f, D), scores[f] (K_f,). Lists, when given, have one entry per frame."""
    n = len(boxes)
    for name, seq in (("keypoints", keypoints), ("features", features), ("scores", scores)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"track_people: {name} has {len(seq)} frames, boxes has {n}")
    tracker = PoseTracker(params, sigmas)
    for f in range(n):
        tracker.update(boxes[f], None if keypoints is None else keypoints[f],
                       None if features is None else features[f], None if scores is None else scores[f])
    return tracker.result()


def plot_tracks(result: TrackingResult, path: str | os.PathLike, title: str = "tracks over time") -> Path:
    """Write a PNG: box centre x per track over frames (top) and each track's lifetime (bottom);
    observed frames solid, interpolated frames hollow. Uses the Agg canvas, no pyplot state."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    ax_x, ax_id = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    from matplotlib.ticker import MaxNLocator

    cmap = matplotlib.colormaps["tab10"]
    for tid, tr in result.tracks.items():
        col = cmap(tid % 10)
        cx = 0.5 * (tr.boxes[:, 0] + tr.boxes[:, 2])
        ax_x.plot(tr.frames, cx, "-", color=col, lw=1, label=f"id {tid}")
        obs, itp = ~tr.interpolated, tr.interpolated
        ax_x.plot(tr.frames[obs], cx[obs], "o", color=col, ms=3)
        ax_x.plot(tr.frames[itp], cx[itp], "o", mfc="none", color=col, ms=4)
        ax_id.plot(tr.frames[obs], np.full(obs.sum(), tid), "|", color=col, ms=8)
        ax_id.plot(tr.frames[itp], np.full(itp.sum(), tid), "x", color=col, ms=4)
    ax_x.set_ylabel("box centre x (px)")
    ax_x.set_title(f"{title}: {len(result.tracks)} tracks, {result.num_frames} frames "
                   "(hollow / x = interpolated)")
    if result.tracks and len(result.tracks) <= 20:
        ax_x.legend(loc="upper right", fontsize=7, ncol=min(len(result.tracks), 5))
    ax_id.set_xlabel("frame")
    ax_id.set_ylabel("track id")
    ax_id.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_id.set_xlim(-0.5, max(result.num_frames - 0.5, 0.5))
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
