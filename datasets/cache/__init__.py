"""poselift HDF5 cache format v1 (see docs/cache-format.md)."""
from .reader import Cache, SequenceInfo, common_sequences, open_cache
from .schema import (FIELDS, KINDS, SCHEMA_NAME, SCHEMA_VERSION, CacheError, CacheHeader,
                     CacheMismatchError, IncompleteCacheError)
from .storage import DEFAULT_POLICY, StoragePolicy
from .stream import SequenceStream
from .writer import CacheWriter

__all__ = ["Cache", "SequenceInfo", "open_cache", "common_sequences", "CacheWriter", "SequenceStream",
           "CacheHeader", "CacheError", "CacheMismatchError", "IncompleteCacheError", "FIELDS",
           "KINDS", "SCHEMA_NAME", "SCHEMA_VERSION", "StoragePolicy", "DEFAULT_POLICY"]
