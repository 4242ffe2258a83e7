"""poselift: offline feature-caching pipeline for 3D human pose from video.

Stages meet only through files on disk:
``poselift.extract`` (video -> crops -> 2D keypoints / 2048-d features -> HDF5 caches),
``poselift.datasets`` (cache format, joint sets, windows, torch datasets),
``poselift.lifting`` (VideoPose3D-style temporal convolutions, TCMR) and
``poselift.evaluation`` (metrics and reports).
"""
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("poselift")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
