"""TCMR/VIBE family: per-frame image features -> GRUs -> SPIN regressor -> SMPL.

``model`` (TCMR, VIBE), ``spin_regressor``, ``smpl_model`` (SMPL body model), ``rotations``,
``data`` (feature-cache windows, mixed 2D/3D sampler), ``losses``, ``train``, ``eval``
(3DPW / MPI-INF-3DHP / H36M protocols), ``interop`` (released ``.pth.tar`` checkpoints),
``cli`` (``poselift-train tcmr`` / ``poselift-evaluate tcmr``).
"""
