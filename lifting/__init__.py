"""poselift.lifting: 2D->3D lifters trained from caches.

Temporal convolutions (VideoPose3D family) and TCMR/VIBE (GRUs + SPIN regressor + SMPL),
their reference checkpoint loaders, training loops and evaluation glue.
"""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .videopose3d.model import TemporalModel, TemporalModelOptimized1f, bn_momentum_schedule
from .videopose3d.interop import export_videopose3d, load_videopose3d

from .tcmr.interop import load_tcmr

__all__ = ["TemporalModel", "TemporalModelOptimized1f", "bn_momentum_schedule",
           "load_videopose3d", "export_videopose3d", "load_tcmr", "save_checkpoint",
           "load_checkpoint", "CheckpointError"]
