"""``poselift infer``: from a video to 3D joints, a rendered MP4 and report.html in one command."""
from .lift import Lifter, lift_track, load_any_lifter
from .pipeline import InferOptions, run_infer

__all__ = ["InferOptions", "run_infer", "Lifter", "load_any_lifter", "lift_track"]
