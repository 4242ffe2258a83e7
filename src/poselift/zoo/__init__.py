"""Weights by name: a table of every published checkpoint poselift reads, fetched once and verified.

``resolve_weights("videopose3d-h36m-cpn")`` returns the cached file (downloading it first);
``resolve_weights("path/to/file.bin")`` returns the path unchanged. See ``docs/weights.md``.
"""
from .download import WeightsError, fetch, file_sha256, recorded_sha256, resolve_weights, weights_name
from .table import UnknownWeightsError, ZooEntry, cached_path, get_entry, is_zoo_name, load_table, weights_dir

__all__ = ["WeightsError", "UnknownWeightsError", "ZooEntry", "fetch", "resolve_weights",
           "weights_name", "file_sha256", "recorded_sha256", "cached_path", "get_entry",
           "is_zoo_name", "load_table", "weights_dir"]
