"""Process-level plumbing shared by every stage: atomic outputs, logging, provenance, progress."""

from vlmerge.runtime.atomic import atomic_path, atomic_write_bytes, atomic_write_json, sha256_file
from vlmerge.runtime.jsonable import jsonable
from vlmerge.runtime.logs import provenance, setup_logging
from vlmerge.runtime.progress import Progress

__all__ = [
    "Progress",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "jsonable",
    "provenance",
    "setup_logging",
    "sha256_file",
]
