"""The per-dataset manifest, and replacing a dataset's files as one unit with the manifest as commit point.

A conversion writes every table into a staging folder inside the output folder
(``<out>/.staging-<dataset>-<pid>/``, same file system, so moving a file is a rename). The manifest
— what was converted, from where, what was skipped, and the sha256 of every output — is written
there last. :func:`commit` then renames each table into place and the manifest last of all:

- a run that fails before the commit leaves the previous tables and manifest untouched (the staging
  folder is removed; one left by a killed run is removed by the next run for that dataset);
- a run killed between the renames leaves the previous manifest beside tables whose sha256 it does
  not list, which the readers refuse (vlmerge.data.readers.table) until prepare runs again;
- after the manifest's rename every listed output is complete and matches it, which is why the
  workflow declares the manifest as the dataset's output.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vlmerge.data.arrow.conversion import Conversion
from vlmerge.data.schema import FILES, VQA_ANSWERS_FILE, manifest_name
from vlmerge.runtime import atomic_write_json, sha256_file
from vlmerge.runtime.atomic import remove_stale_temps
from vlmerge.runtime.experiment import experiment_record

log = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"


def staging_dir(out: Path, dataset: str) -> Path:
    """This process's staging folder for ``dataset`` inside ``out`` (not created)."""
    return out / f"{STAGING_PREFIX}{dataset}-{os.getpid()}"


def remove_stale_staging(out: Path, dataset: str) -> list[Path]:
    """Remove what killed earlier runs for ``dataset`` left in ``out``; returns the removed paths.

    That is every ``.staging-<dataset>-*`` folder but this process's own, and the ``.tmp-*`` files of
    the dataset's outputs that a run writing straight into ``out`` left. Two runs for one dataset and
    folder must not overlap (they would replace each other's outputs anyway).
    """
    if not out.is_dir():
        return []
    own = staging_dir(out, dataset)
    removed = []
    for path in sorted(out.glob(f"{STAGING_PREFIX}{dataset}-*")):
        if path != own and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            log.warning("removed %s, left by an interrupted run of prepare", path)
            removed.append(path)
    names = [manifest_name(dataset), *(p for p in FILES[dataset].values() if "{shard}" not in p)]
    if dataset == "vqa":
        names.append(VQA_ANSWERS_FILE)
    for name in names:
        removed.extend(remove_stale_temps(out / name))
    for pattern in FILES[dataset].values():
        if "{shard}" in pattern:
            for temp in _matching(out, f".tmp-{pattern}.", any_suffix=True):
                temp.unlink(missing_ok=True)
                log.info("removed %s, left by an interrupted write", temp)
                removed.append(temp)
    return removed


def write_manifest(run: Conversion, provenance: dict[str, Any]) -> Path:
    """Write ``<run.out>/<dataset>.manifest.json`` (the staging folder under prepare); return its path."""
    skipped_by_reason: dict[str, int] = {}
    for item in run.skipped:
        reason = item["reason"].split(" (")[0]
        skipped_by_reason[reason] = skipped_by_reason.get(reason, 0) + 1
    record = {
        "dataset": run.dataset,
        "raw": str(run.raw),
        "options": asdict(run.options),
        "splits": run.splits,
        "images": run.images,
        "details": run.details,
        "skipped_count": len(run.skipped),
        "skipped_by_reason": skipped_by_reason,
        "skipped": run.skipped,
        "files": {path.name: sha256_file(path) for path in sorted(run.outputs)},
        "provenance": provenance,
        **experiment_record(),  # the experiment (--experiment) that converted it; null when none was named
    }
    path = run.out / manifest_name(run.dataset)
    atomic_write_json(path, record)
    return path


def commit(run: Conversion, out: Path) -> Path:
    """Move ``run``'s outputs and manifest from its staging folder into ``out``, the manifest last.

    Shards of this dataset in ``out`` that the new manifest does not list (an earlier run with more
    rows or a smaller shard size) are removed before the manifest moves. Returns the manifest's path.
    """
    manifest = run.out / manifest_name(run.dataset)
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no manifest to commit")
    names = {path.name for path in run.outputs}
    for name in sorted(names):
        os.replace(run.out / name, out / name)
    for pattern in FILES[run.dataset].values():
        if "{shard}" in pattern:
            for stale in _matching(out, pattern):
                if stale.name not in names:
                    log.warning("removing stale shard %s from an earlier run", stale)
                    stale.unlink()
    target = out / manifest.name
    os.replace(manifest, target)
    _fsync_dir(out)
    return target


def _matching(folder: Path, pattern: str, any_suffix: bool = False) -> list[Path]:
    """The files in ``folder`` named by a sharded ``pattern`` (``{shard}`` = digits, then anything if
    ``any_suffix``)."""
    head, tail = pattern.split("{shard}")
    regex = re.compile(re.escape(head) + r"\d+" + re.escape(tail) + (".*" if any_suffix else ""))
    found = folder.glob(f"{head}*{tail}*" if any_suffix else f"{head}*{tail}")
    return sorted(p for p in found if regex.fullmatch(p.name) and p.is_file() and not p.is_symlink())


def _fsync_dir(folder: Path) -> None:
    """Make the renames into ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
