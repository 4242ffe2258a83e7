"""Frame sources with an exact frame-index mapping: frame ``i`` of a source is index ``i``.

Videos are decoded strictly sequentially (``grab`` for frames that are skipped), because
container seeks (``CAP_PROP_POS_FRAMES``) land on key frames for many codecs and would silently
shift the index mapping. Only one decoded frame is alive at a time, so memory stays bounded for
arbitrarily long videos.
"""
from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from typing import Iterable, Iterator, Union

import cv2
import numpy as np

from poselift.core.errors import UserError

__all__ = ["VideoError", "CorruptVideoError", "FrameRangeError", "VideoSource", "ImageFolderSource",
           "FrameSource", "open_source", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class VideoError(UserError, RuntimeError):
    """A frame source cannot be opened or read; the message names the file."""


class CorruptVideoError(VideoError):
    """A frame failed to decode in the middle of a source; names the file and frame index."""

    def __init__(self, path: str | os.PathLike, frame: int, detail: str = "") -> None:
        self.path, self.frame = str(path), int(frame)
        super().__init__(f"{path}: frame {frame} failed to decode{': ' + detail if detail else ''}"
                         " (the file is truncated or corrupt)")


class FrameRangeError(VideoError):
    """A requested frame index lies outside the source."""


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise VideoError(f"{path}: {what} does not exist")
    if path.is_file() and path.stat().st_size == 0:
        raise VideoError(f"{path}: {what} is an empty (zero-byte) file")


def _check_indices(path: Path, indices: Iterable[int] | None) -> list[int] | None:
    if indices is None:
        return None
    idx = [int(i) for i in indices]
    if idx and idx[0] < 0:
        raise FrameRangeError(f"{path}: negative frame index {idx[0]} requested")
    for a, b in zip(idx, idx[1:]):
        if b <= a:
            raise ValueError(f"{path}: frame indices must be strictly increasing (decoding only "
                             f"seeks forward); got {a} then {b}")
    return idx


class VideoSource:
    """A video file read with ``cv2.VideoCapture`` (any container/codec OpenCV's FFmpeg reads).

    ``frames()`` yields ``(index, frame)`` with ``frame`` a BGR uint8 (H, W, 3) array.
    ``num_frames`` is the container's frame count (may be an estimate for some streams; -1 when
    unknown): a decode failure before that count is a ``CorruptVideoError``, a request past the
    real end is a ``FrameRangeError``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        _check_file(self.path, "video file")
        if self.path.is_dir():
            raise VideoError(f"{self.path}: is a directory; use ImageFolderSource for frame folders")
        cap = cv2.VideoCapture(str(self.path))
        try:
            if not cap.isOpened():
                raise VideoError(f"{self.path}: OpenCV cannot open this video (unknown container, "
                                 f"missing header/moov atom or truncated file)")
            n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            self.num_frames = int(n) if n and n > 0 else -1
            fps = cap.get(cv2.CAP_PROP_FPS)
            self.fps = float(fps) if fps and fps > 0 else 0.0
            self.size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        finally:
            cap.release()

    def __len__(self) -> int:
        return max(self.num_frames, 0)

    def frames(self, indices: Iterable[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Decode frames in order; ``indices`` (strictly increasing) selects a subset."""
        wanted = _check_indices(self.path, indices)
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise VideoError(f"{self.path}: OpenCV cannot open this video")
        try:
            pos = 0
            targets: Iterable[int] = wanted if wanted is not None else itertools.count()
            for target in targets:
                while pos < target:  # skip forward without converting pixels
                    if not cap.grab():
                        self._fail(pos, target)
                    pos += 1
                ok, frame = cap.read()
                if not ok or frame is None:
                    if wanted is None and (self.num_frames < 0 or pos >= self.num_frames):
                        return  # natural end of the stream
                    self._fail(pos, target)
                pos += 1
                yield target, frame
        finally:
            cap.release()

    def _fail(self, pos: int, target: int) -> None:
        if self.num_frames >= 0 and target >= self.num_frames:
            raise FrameRangeError(f"{self.path}: frame {target} requested but the video has "
                                  f"{self.num_frames} frames")
        if self.num_frames < 0:
            raise FrameRangeError(f"{self.path}: frame {target} requested but decoding stopped "
                                  f"after {pos} frames (frame count unknown)")
        raise CorruptVideoError(self.path, pos, f"the container reports {self.num_frames} frames")


def _natural_key(name: str) -> list:
    # '2.jpg' before '10.jpg'; equals plain sorting for zero-padded names.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class ImageFolderSource:
    """A folder of image files; frame ``i`` is the ``i``-th file in natural sort order
    (digit runs compared as numbers, so zero padding does not matter)."""

    def __init__(self, path: str | os.PathLike, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise VideoError(f"{self.path}: image folder does not exist or is not a directory")
        files = [p for p in self.path.iterdir() if p.suffix.lower() in extensions and p.is_file()]
        if not files:
            raise VideoError(f"{self.path}: no image files ({', '.join(extensions)}) in the folder")
        self.files = sorted(files, key=lambda p: _natural_key(p.name))
        self.num_frames = len(self.files)
        self.fps = 0.0
        self._size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.num_frames

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the first image."""
        if self._size is None:
            img = self._read(0)
            self._size = (img.shape[1], img.shape[0])
        return self._size

    def _read(self, i: int) -> np.ndarray:
        f = self.files[i]
        if f.stat().st_size == 0:
            raise CorruptVideoError(f, i, "zero-byte image file")
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is None:
            raise CorruptVideoError(f, i, "OpenCV cannot decode this image")
        return img

    def frames(self, indices: Iterable[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        wanted = _check_indices(self.path, indices)
        for i in (wanted if wanted is not None else range(self.num_frames)):
            if i >= self.num_frames:
                raise FrameRangeError(f"{self.path}: frame {i} requested but the folder has "
                                      f"{self.num_frames} images")
            yield i, self._read(i)


FrameSource = Union[VideoSource, ImageFolderSource]


def open_source(path: str | os.PathLike) -> FrameSource:
    """A directory becomes an ImageFolderSource, anything else a VideoSource."""
    p = Path(path)
    return ImageFolderSource(p) if p.is_dir() else VideoSource(p)
