"""Feature extraction into a cache: (video, boxes) sequences -> crops -> backbone -> HDF5.

Work split: DataLoader workers decode and crop (``CropStream``, an IterableDataset that deals
whole sequences to workers and yields per-sequence chunks of crops in frame order); the main
process normalises on the device, runs the backbone in batches and streams each sequence into
the cache (``CacheWriter.begin_sequence`` -> ``append`` -> ``commit``). Nothing ever holds a whole
video: memory is bounded by (workers x prefetch x chunk) crops.

Per frame the cache stores ``features`` (T, D), ``boxes`` (T, 4) xyxy px as given (NaN where
there is no box), ``frame_index`` (T,) and ``valid`` (T,). Frames whose box is missing, of zero
size, or whose crop lies completely outside the image are ``valid=False`` with zero features
(counted and warned about); the backbone never sees them.

A sequence that fails (corrupt or truncated video, no boxes, bad frame indices) is aborted,
logged and listed in the result; the others go on, and a re-run retries only what is missing.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from poselift.core.progress import progress_bar

from poselift.core.precision import inference_precision, precision_record
from poselift.datasets.cache import CacheHeader, CacheWriter

from .contracts import PreprocessContract
from .crops import box_overlaps_image, crop, square_crop_affine
from .sharding import balance_by_frames
from .video import open_source

__all__ = ["SequenceSpec", "ExtractionResult", "CropStream", "BackboneRunner", "extract_features",
           "inputs_fingerprint", "input_fingerprints"]

log = logging.getLogger(__name__)


@dataclass
class SequenceSpec:
    """One sequence to extract: ``boxes`` (T, 4) xyxy px (NaN rows = no box) for the source
    frames ``frame_index`` (T,), strictly increasing; None means frames 0..T-1."""

    seq_id: str
    source: str | os.PathLike
    boxes: np.ndarray
    frame_index: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def frames(self) -> np.ndarray:
        return (np.arange(len(self.boxes), dtype=np.int64) if self.frame_index is None
                else np.asarray(self.frame_index, dtype=np.int64))


@dataclass
class ExtractionResult:
    """Summary of one run: sequence ids written, skipped (already cached) and failed (id -> error)."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    frames: int = 0
    invalid_frames: int = 0
    seconds: float = 0.0

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class CropStream(IterableDataset):
    """Yields chunks ``{seq, frame_index (b,), crops uint8 (b, S, S, 3) RGB, boxes (b, 4),
    valid (b,), last, meta, n_outside}`` per sequence in frame order, at most ``chunk`` frames
    each; a failing sequence yields ``{seq, error, last=True}`` and the stream goes on."""

    def __init__(self, specs: Sequence[SequenceSpec], contract: PreprocessContract, chunk: int = 32) -> None:
        self.specs, self.contract, self.chunk = list(specs), contract, int(chunk)

    def _mine(self) -> list[int]:
        info = get_worker_info()
        if info is None:
            return list(range(len(self.specs)))
        return balance_by_frames([len(s.boxes) for s in self.specs], info.num_workers)[info.id]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in self._mine():
            try:
                yield from self._sequence(i)
            except Exception as e:  # reported per sequence; the other sequences keep going
                yield {"seq": i, "error": f"{type(e).__name__}: {e}", "last": True}

    def _sequence(self, i: int) -> Iterator[dict[str, Any]]:
        spec, c = self.specs[i], self.contract
        boxes = np.asarray(spec.boxes, dtype=np.float32)
        frames = spec.frames()
        if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) != len(frames):
            raise ValueError(f"sequence {spec.seq_id!r}: boxes {boxes.shape} must be (T, 4) with T = "
                             f"{len(frames)} frame indices")
        has_box = np.isfinite(boxes).all(1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not has_box.any():
            raise ValueError(f"sequence {spec.seq_id!r}: no frame has a person box ({len(boxes)} frames)")
        src = open_source(spec.source)
        if spec.frame_index is None and src.num_frames >= 0 and len(boxes) != src.num_frames:
            # one box row per frame is the contract; fewer rows would silently drop the tail
            raise ValueError(f"sequence {spec.seq_id!r}: {len(boxes)} box rows but {spec.source} has "
                             f"{src.num_frames} frames; give one row per frame (NaN = no person) "
                             f"or a frame_index")
        meta = {"fps": float(src.fps), "image_size": [int(v) for v in src.size],
                "source_frames": int(src.num_frames), "source": Path(spec.source).name}
        s = c.crop_size
        buf = np.zeros((self.chunk, s, s, 3), np.uint8)
        rows: list[int] = []
        n_outside = 0
        for k, (fi, frame) in enumerate(src.frames(frames)):
            j = len(rows)
            buf[j] = 0
            ok = bool(has_box[k])
            if ok:
                h, w = frame.shape[:2]
                ok = box_overlaps_image(boxes[k], (w, h), c.bbox_scale)
                n_outside += not ok
            if ok:
                m = square_crop_affine(boxes[k], scale=c.bbox_scale, out_size=s)
                cv2.cvtColor(crop(frame, m, s), cv2.COLOR_BGR2RGB, dst=buf[j])
            has_box[k] = ok
            rows.append(k)
            if len(rows) == self.chunk or k == len(frames) - 1:
                r = np.asarray(rows)
                yield {"seq": i, "frame_index": frames[r], "crops": buf[:len(r)].copy(),
                       "boxes": boxes[r], "valid": has_box[r].copy(), "last": k == len(frames) - 1,
                       "meta": meta, "n_outside": n_outside}
                rows, n_outside = [], 0


def _worker_init(_: int) -> None:
    # Each worker decodes one stream; extra torch threads in it would only fight the model.
    # Do NOT call cv2.setNumThreads here: in a forked child whose parent already used OpenCV's
    # thread pool it deadlocks (checked with OpenCV 4.x/5.0 on this machine).
    torch.set_num_threads(1)


class BackboneRunner:
    """Runs a backbone on uint8 RGB crops (B, S, S, 3) and returns float32 features (B, D).

    CPU: float32, channels_last, inference_mode. CUDA: additionally fp16 autocast and
    non-blocking copies from pinned memory. ``compile=True`` tries ``torch.compile`` and falls
    back to eager with a warning if compilation fails on the first batch.
    ``flush_denormal`` (CPU): flush subnormal floats to zero during the forward and switch it off
    again afterwards; subnormals made a randomly initialised ResNet-50 20-40x slower here, and
    values below 1e-38 are zero in float16 storage anyway.
    """

    def __init__(self, model: torch.nn.Module, contract: PreprocessContract, device: str | torch.device = "cpu",
                 *, amp: bool = True, compile: bool = False, flush_denormal: bool = True,
                 precision: str | None = None) -> None:
        self.device = torch.device(device)
        # ``precision`` (fp32 | bf16 | fp16 | auto, poselift.core.precision) overrides ``amp``:
        # bf16 autocast doubles ResNet-50's CPU rate on AVX512-BF16 (docs/benchmarks.md).
        self.precision = inference_precision(precision, self.device, amp=amp)
        self._autocast = self.precision.autocast
        self.flush = flush_denormal and self.device.type == "cpu"
        self.contract = contract
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.amp = amp and self.device.type == "cuda"
        self._fn = self.model
        self._compiled = False
        if compile:
            try:
                self._fn, self._compiled = torch.compile(self.model), True
            except Exception as e:  # noqa: BLE001 - any backend problem means eager
                warnings.warn(f"torch.compile unavailable ({e}); running eager", stacklevel=2)

    def __call__(self, crops: torch.Tensor | np.ndarray) -> np.ndarray:
        x = torch.as_tensor(crops).to(self.device, non_blocking=True)
        x = self.contract.normalize(x, rgb_input=True).contiguous(memory_format=torch.channels_last)
        if self.flush:
            torch.set_flush_denormal(True)
        try:
            with torch.inference_mode(), self._autocast():
                y = self._forward(x)
        finally:
            if self.flush:
                torch.set_flush_denormal(False)
        return y.float().cpu().numpy()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self._fn(x)
        except Exception as e:  # noqa: BLE001
            if not self._compiled:
                raise
            # Compilation happens lazily, on a first batch or a new batch shape; eager is always a
            # correct fallback (a genuine error will simply recur there).
            warnings.warn(f"torch.compile failed ({type(e).__name__}: {e}); falling back to eager",
                          stacklevel=3)
            self._fn, self._compiled = self.model, False
            return self._fn(x)

    def feature_dim(self, crop_size: int) -> int:
        """D of the model (from ``feature_dim`` or by one probe forward)."""
        if not hasattr(self, "_dim"):
            d = getattr(self.model, "feature_dim", None)
            self._dim = int(d) if d else self(np.zeros((1, crop_size, crop_size, 3), np.uint8)).shape[1]
        return self._dim


def feed_sha256(items: Iterable[Any], feed: Callable[[Any, Any], None]) -> str:
    """Hex sha256 of what ``feed(h, item)`` writes into one hash for each of ``items`` in turn;
    the fingerprints of extraction inputs (sequences here, detections in ``keypoints``)."""
    h = hashlib.sha256()
    for item in items:
        feed(h, item)
    return h.hexdigest()


def inputs_fingerprint(specs: Sequence[SequenceSpec]) -> str:
    """sha256 over every sequence's id, source file name and size, boxes and frame indices
    (not the absolute path, so a moved data folder still resumes)."""
    return feed_sha256(sorted(specs, key=lambda s: s.seq_id), _feed_input)


def input_fingerprints(specs: Sequence[SequenceSpec]) -> dict[str, str]:
    """Per sequence, the sha256 of what ``inputs_fingerprint`` hashes for it: a resume re-does
    exactly the sequences whose input changed (a fixed video, edited boxes)."""
    return {s.seq_id: feed_sha256([s], _feed_input) for s in specs}


def _feed_input(h: Any, s: SequenceSpec) -> None:
    p = Path(s.source)
    size = p.stat().st_size if p.is_file() else -1
    h.update(f"{s.seq_id}|{p.name}|{size}|".encode())
    h.update(np.ascontiguousarray(s.boxes, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(s.frames()).tobytes())


def _source_info(backbone: torch.nn.Module, extractor: str | None, weights_sha256: str | None,
                 contract: PreprocessContract, dtype: np.dtype, precision: dict[str, Any]) -> dict[str, Any]:
    info = getattr(backbone, "load_info", None) or {}
    sha = weights_sha256 or info.get("sha256")
    if not sha:
        raise ValueError("weights_sha256 is required: the sha256 of the checkpoint file, or "
                         "'random-init:seed=<n>' for an untrained backbone")
    name = extractor or (f"resnet{backbone.depth}" if hasattr(backbone, "depth") else type(backbone).__name__)
    zoo = {"weights_name": info["weights_name"]} if info.get("weights_name") else {}  # zoo provenance
    return {"extractor": name, "weights_sha256": sha, **zoo, "contract": contract.to_dict(),
            "feature_dim": int(getattr(backbone, "feature_dim", 0)), "dtype": np.dtype(dtype).name,
            # Features computed in bf16/fp16 differ from fp32 ones in the last bits (~0.4 %):
            # recorded so that a resumed run in another precision is refused, not mixed.
            "precision": precision}


def extract_features(sequences: Sequence[SequenceSpec], out_path: str | os.PathLike,
                     backbone: torch.nn.Module, contract: PreprocessContract, *, batch_size: int = 32,
                     num_workers: int = 0, device: str | torch.device = "cpu",
                     dtype: Any = np.float16, weights_sha256: str | None = None,
                     extractor: str | None = None, dataset: str = "custom",
                     fingerprint: str | None = None, compile: bool = False, amp: bool = True,
                     overwrite: bool = False, progress: bool = True,
                     precision: str | None = None) -> ExtractionResult:
    """Extract backbone features for ``sequences`` into the features cache ``out_path``.

    Args:
        sequences: what to extract; ids must be unique.
        backbone: module mapping normalised crops (B, 3, S, S) to features (B, D).
        contract: crop size, bbox scale and normalisation (stored as ``source.contract``).
        batch_size: frames per backbone call (and per worker chunk).
        num_workers: DataLoader workers for decode + crop (0 = in the main process).
        dtype: stored feature dtype, float16 (default) or float32.
        weights_sha256: sha256 of the checkpoint file, or ``"random-init:seed=<n>"``; defaults to
            ``backbone.load_info['sha256']`` set by the loaders.
        extractor: name stored in the header (default ``resnet<depth>``).
        fingerprint: ``inputs_fingerprint`` of the header (default: ``inputs_fingerprint(sequences)``).
        compile, amp: ``torch.compile`` (with eager fallback); fp16 autocast on CUDA only.
        precision: fp32 | bf16 | fp16 | auto; when given it replaces ``amp`` (bf16 works on CPUs).
        overwrite: discard an existing cache / interrupted run with different settings.

    Returns an ``ExtractionResult``; the cache is finalised with every sequence that succeeded.
    """
    if contract.supporting_frames:
        raise ValueError("feature backbones are single-frame; contract.supporting_frames must be empty")
    dtype = np.dtype(dtype)
    if dtype not in (np.float16, np.float32):
        raise ValueError(f"features are stored as float16 or float32, not {dtype}")
    ids = [s.seq_id for s in sequences]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate sequence ids {dup[:5]}")
    header = CacheHeader(kind="features", dataset=dataset, joint_set=None,
                         source=_source_info(backbone, extractor, weights_sha256, contract, dtype,
                                             precision_record(precision, device, amp)),
                         inputs_fingerprint=fingerprint or inputs_fingerprint(sequences),
                         input_fingerprints=input_fingerprints(sequences))
    result = ExtractionResult()
    t0 = time.perf_counter()
    # allow_nonfinite: boxes of frames without a detection are stored as NaN (valid=False);
    # features are checked for finiteness here instead.
    with CacheWriter(out_path, header, overwrite=overwrite, allow_nonfinite=True) as writer:
        todo = [s for s in sequences if not writer.has(s.seq_id)]
        result.skipped = [s.seq_id for s in sequences if writer.has(s.seq_id)]
        if todo:
            _run(todo, writer, backbone, contract, batch_size, num_workers, device, dtype,
                 compile, amp, progress, result, precision)
    result.seconds = time.perf_counter() - t0
    for sid, err in result.failed.items():
        log.error("sequence %r failed: %s", sid, err)
    return result


def _run(todo: list[SequenceSpec], writer: CacheWriter, backbone: torch.nn.Module,
         contract: PreprocessContract, batch_size: int, num_workers: int, device: str | torch.device,
         dtype: np.dtype, compile: bool, amp: bool, progress: bool, result: ExtractionResult,
         precision: str | None = None) -> None:
    runner = BackboneRunner(backbone, contract, device, amp=amp, compile=compile, precision=precision)
    cuda = runner.device.type == "cuda"
    loader = DataLoader(CropStream(todo, contract, batch_size), batch_size=None,
                        num_workers=num_workers, pin_memory=cuda,
                        worker_init_fn=_worker_init if num_workers > 0 else None,
                        prefetch_factor=2 if num_workers > 0 else None)
    streams: dict[int, Any] = {}
    dead: set[int] = set()
    bar = progress_bar(total=sum(len(s.boxes) for s in todo), unit="frame", progress=progress,
                       desc=f"features -> {Path(writer.path).name}", smoothing=0.1)
    try:
        for ch in loader:
            i = int(ch["seq"])
            spec = todo[i]
            if i in dead:
                continue
            if "error" in ch:
                _fail(i, spec, ch["error"], streams, dead, result)
                continue
            try:
                _consume(ch, i, spec, runner, writer, streams, dtype, result)
            except Exception as e:  # a bad sequence (e.g. non-finite features) must not stop the rest
                if isinstance(e, (KeyboardInterrupt, MemoryError)):
                    raise
                _fail(i, spec, f"{type(e).__name__}: {e}", streams, dead, result)
                continue
            bar.update(len(ch["valid"]))
    finally:
        bar.close()
        for op in streams.values():  # interrupted mid-sequence: drop the unfinished part files
            op.stream.abort()


@dataclass
class _Open:
    """A sequence being streamed into the cache."""

    stream: Any
    n_outside: int = 0
    frames: int = 0
    invalid: int = 0


def _fail(i: int, spec: SequenceSpec, err: str, streams: dict, dead: set, result: ExtractionResult) -> None:
    op = streams.pop(i, None)
    if op is not None:
        op.stream.abort()
    dead.add(i)
    result.failed[spec.seq_id] = err  # logged once, by extract_features


def _consume(ch: dict[str, Any], i: int, spec: SequenceSpec, runner: BackboneRunner,
             writer: CacheWriter, streams: dict, dtype: np.dtype, result: ExtractionResult) -> None:
    valid = np.asarray(ch["valid"], dtype=bool)
    crops = ch["crops"]
    feats = None
    if valid.any():
        idx = torch.from_numpy(np.flatnonzero(valid))
        out = runner(crops if valid.all() else crops[idx])
        feats = np.zeros((len(valid), out.shape[1]), dtype)
        feats[valid] = out.astype(dtype)
        if not np.isfinite(feats[valid]).all():
            raise ValueError(f"non-finite features (overflow in {dtype.name}?) in frames "
                             f"{np.asarray(ch['frame_index'])[valid][~np.isfinite(feats[valid]).all(1)][:5].tolist()}")
    if i not in streams:
        meta = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in ch["meta"].items()}
        streams[i] = _Open(writer.begin_sequence(spec.seq_id, {**meta, **spec.attrs}))
    op = streams[i]
    if feats is None:  # no valid frame in this chunk: zeros of the model's width
        feats = np.zeros((len(valid), runner.feature_dim(crops.shape[1])), dtype)
    op.stream.append({"features": feats, "boxes": np.asarray(ch["boxes"], np.float32),
                      "frame_index": np.asarray(ch["frame_index"], np.int64), "valid": valid})
    op.frames += len(valid)  # counted in the summary only once the sequence commits
    op.invalid += int((~valid).sum())
    op.n_outside += int(ch["n_outside"])
    if ch["last"]:
        streams.pop(i).stream.commit()
        result.frames += op.frames
        result.invalid_frames += op.invalid
        if op.n_outside:
            warnings.warn(f"sequence {spec.seq_id!r}: {op.n_outside} frame(s) whose crop lies entirely "
                          f"outside the image are stored with valid=False and zero features",
                          stacklevel=4)
        result.written.append(spec.seq_id)
