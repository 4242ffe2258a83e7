"""poselift.evaluation: pure pose metrics, grouped reports and published protocols.

Depends on nothing else of poselift (numpy only; matplotlib in ``plots``, which is
not imported here so that metrics stay cheap to import). Metric functions return the
unit of their input; reports scale to millimetres.
"""
from .metrics import (acceleration, acceleration_error, acceleration_error_with_mask,
                      center_on, evaluated, joint_errors, mpjpe, mpjve, n_mpjpe, p_mpjpe,
                      per_sequence, procrustes_align, pve, root_align, split_sequences)
from .protocols import (ProtocolResult, ProtocolTable, action_group, tcmr_summary,
                        videopose3d_protocol)
from .records import FRAME_METRICS, SequenceRecord, SequenceResult, compute_sequence
from .report import Report, evaluate_sequences

__all__ = [
    "acceleration", "acceleration_error", "acceleration_error_with_mask", "center_on",
    "evaluated", "joint_errors", "mpjpe", "mpjve", "n_mpjpe", "p_mpjpe", "per_sequence",
    "procrustes_align", "pve", "root_align", "split_sequences",
    "ProtocolResult", "ProtocolTable", "action_group", "tcmr_summary", "videopose3d_protocol",
    "FRAME_METRICS", "SequenceRecord", "SequenceResult", "compute_sequence",
    "Report", "evaluate_sequences",
]
