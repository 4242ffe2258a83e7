"""Synthetic stand-ins for licensed data, shared by the demo, tests and benchmarks.

``smpl``: a SMPL-format body model (no licensed files needed); ``tcmr``: small TCMR-style
databases and caches built on it. Package model code never imports from here.
"""
