"""Frame sources: exact index mapping, forward-only decoding, clear errors for broken inputs."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest

from poselift.extract.video import (CorruptVideoError, FrameRangeError, ImageFolderSource, VideoError,
                                    VideoSource, open_source)

W, H = 64, 48


def frame_image(i: int) -> np.ndarray:
    """Frame i: uniform grey level 8*i (survives lossy codecs) plus a moving bright rectangle."""
    f = np.full((H, W, 3), 8 * i, np.uint8)
    f[30:44, i % 50:i % 50 + 10] = 255
    return f


def write_video(path: Path, n: int, fourcc: str = "mp4v") -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25.0, (W, H))
    assert w.isOpened(), f"cv2.VideoWriter cannot write {fourcc}"
    for i in range(n):
        w.write(frame_image(i))
    w.release()
    return path


def which_frame(frame: np.ndarray, n: int = 32) -> int:
    """Index of the written frame closest to a decoded (lossy) one."""
    err = [np.abs(frame.astype(np.int32) - frame_image(k)).mean() for k in range(n)]
    return int(np.argmin(err))


def test_video_reads_every_frame_with_its_index(tmp_path: Path) -> None:
    src = VideoSource(write_video(tmp_path / "a.mp4", 30))
    assert (src.num_frames, src.size, src.fps) == (30, (W, H), 25.0)
    got = list(src.frames())
    assert [i for i, _ in got] == list(range(30))
    for i, f in got:
        assert f.shape == (H, W, 3) and f.dtype == np.uint8
        assert which_frame(f) == i


def test_video_subset_is_exact_and_lazy(tmp_path: Path) -> None:
    src = VideoSource(write_video(tmp_path / "a.mp4", 30))
    it = src.frames([0, 3, 4, 17, 29])
    assert isinstance(it, Iterator)  # a generator: one decoded frame alive at a time
    got = list(it)
    assert [i for i, _ in got] == [0, 3, 4, 17, 29]
    assert [which_frame(f) for _, f in got] == [0, 3, 4, 17, 29]


def test_video_rejects_backward_seeks_and_out_of_range(tmp_path: Path) -> None:
    src = VideoSource(write_video(tmp_path / "a.mp4", 10))
    with pytest.raises(ValueError, match="strictly increasing"):
        list(src.frames([3, 2]))
    with pytest.raises(FrameRangeError, match=r"frame 12 requested but the video has 10 frames"):
        list(src.frames([1, 12]))
    with pytest.raises(FrameRangeError, match="negative"):
        list(src.frames([-1, 2]))


def test_missing_empty_and_truncated_files(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="does not exist"):
        VideoSource(tmp_path / "nope.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match=r"empty.mp4: .*zero-byte"):
        VideoSource(tmp_path / "empty.mp4")
    good = write_video(tmp_path / "good.mp4", 20).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(good[: len(good) // 2])  # moov atom at the end is lost
    with pytest.raises(VideoError, match=r"cut.mp4: OpenCV cannot open"):
        VideoSource(tmp_path / "cut.mp4")


def test_truncated_avi_fails_mid_video_naming_file_and_frame(tmp_path: Path) -> None:
    good = write_video(tmp_path / "g.avi", 30, "MJPG").read_bytes()
    bad = tmp_path / "cut.avi"
    bad.write_bytes(good[: int(len(good) * 0.6)])  # header says 30 frames, data stops earlier
    src = VideoSource(bad)
    assert src.num_frames == 30
    seen = []
    with pytest.raises(CorruptVideoError) as ei:
        for i, _ in src.frames():
            seen.append(i)
    e = ei.value
    assert e.path == str(bad) and e.frame == len(seen) and 0 < e.frame < 30
    assert f"frame {e.frame} failed to decode" in str(e) and "cut.avi" in str(e)
    with pytest.raises(CorruptVideoError):  # skipping with grab() hits the same damage
        list(src.frames([29]))


def test_image_folder_natural_order_and_errors(tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(12):  # unpadded names: '10.png' must come after '9.png'
        cv2.imwrite(str(d / f"{i}.png"), frame_image(i))
    (d / "notes.txt").write_text("ignored")
    src = open_source(d)
    assert isinstance(src, ImageFolderSource) and src.num_frames == 12 and src.size == (W, H)
    got = list(src.frames([2, 9, 10, 11]))
    assert [i for i, _ in got] == [2, 9, 10, 11]
    for i, f in got:
        np.testing.assert_array_equal(f, frame_image(i))  # png is lossless
    with pytest.raises(FrameRangeError, match="frame 12 requested but the folder has 12 images"):
        list(src.frames([12]))
    (d / "5.png").write_bytes(b"")
    with pytest.raises(CorruptVideoError, match=r"5.png: frame 5 failed to decode: zero-byte"):
        list(src.frames())
    (d / "5.png").write_bytes(b"not a png")
    with pytest.raises(CorruptVideoError, match=r"5.png: frame 5 .*cannot decode"):
        list(src.frames([4, 5]))
    (tmp_path / "none").mkdir()
    with pytest.raises(VideoError, match="no image files"):
        ImageFolderSource(tmp_path / "none")
