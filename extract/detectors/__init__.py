"""Person detectors in plain PyTorch (no torchvision): YOLOX nano/tiny/s/m/l/x.

``load_yolox`` builds the model from an official checkpoint, ``yolox_preprocess`` /
``yolox_postprocess`` reproduce the reference's letterbox and NMS, ``detect_people`` runs the
whole chain over frames and keeps the person boxes.
"""
from .detect import FrameBoxes, detect_people, pick_device
from .ops import batched_nms, decode_outputs, nms, yolox_postprocess, yolox_preprocess
from .yolox import YOLOX, YOLOX_SIZES, load_yolox, yolox_config_from_state_dict

__all__ = ["YOLOX", "YOLOX_SIZES", "load_yolox", "yolox_config_from_state_dict", "yolox_preprocess",
           "yolox_postprocess", "nms", "batched_nms", "decode_outputs", "detect_people",
           "FrameBoxes", "pick_device"]
