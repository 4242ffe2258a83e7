"""VideoPose3D family: temporal-convolution lifters (2D keypoint windows -> 3D joints).

``model`` (TemporalModel and its one-frame training twin), ``data`` (cache windows),
``losses``, ``semi_supervised`` (back-projection branch), ``train``, ``infer``, ``eval``,
``interop`` (reference ``.bin`` checkpoints), ``cli`` (``poselift-train lift`` /
``poselift-evaluate lifter``).
"""
