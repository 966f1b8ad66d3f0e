"""Logging set-up and the provenance record every stage writes next to its outputs."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

_LIBRARIES = ("torch", "lightning", "transformers", "tokenizers", "timm", "pyarrow", "pandas", "numpy")


def _rank() -> int:
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr; non-zero ranks only log warnings so multi-rank jobs do not repeat themselves."""
    level = logging.DEBUG if verbose else logging.INFO
    if _rank() != 0:
        level = logging.WARNING
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def git_sha() -> str | None:
    """The commit of the vlmerge source tree, or None outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def provenance(stage: str, resolved_config: dict[str, Any]) -> dict[str, Any]:
    """What produced an output: stage, resolved config, git SHA and library versions."""
    record = {
        "stage": stage,
        "config": resolved_config,
        "git_sha": git_sha(),
        "versions": library_versions(),
        "argv": sys.argv,
    }
    log = logging.getLogger(f"vlmerge.{stage}")
    log.info("git %s, versions %s", record["git_sha"], record["versions"])
    log.info("resolved config %s", resolved_config)
    return record
