"""Stage ``merge``: merge an MS checkpoint's experts into an MA checkpoint with a registered method.

    python -m vlmerge.merge --method regmean --param alpha=0.9 --ms MS.safetensors --grams G.safetensors \\
        --out merged.safetensors
    python -m vlmerge.merge --list

Writes the merged weights (strict-loadable into the shared model) and a sidecar recording the
method, its resolved parameters, the sha256 of every input and per-layer diagnostics. Bad input
(an MA checkpoint given as MS, disagreeing shapes or presets, NaN/Inf, grams from another model, an
unknown method or parameter, a missing seed, grams of another task than ``used_experts_only``'s, a
non-finite result, an ``--out`` that is an input or its sidecar, an input of another
``--experiment``) ends with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmerge.catalog.methods import SELECTION_PARAMS, resolve_selection
from vlmerge.catalog.params import to_json
from vlmerge.runtime.checksums import BackgroundChecksums
from vlmerge.runtime.outputs import check_outputs, with_sidecar
from vlmerge.runtime.settings import add_experiment_argument
from vlmerge.runtime.stage import run_stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergeConfig:
    method: str
    params: dict[str, str]
    ms: Path
    out: Path
    seed: Path | None = None
    grams: Path | None = None
    allow_foreign_grams: bool = False
    allow_other_task_grams: bool = False

    def resolved(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "params": self.params,
            "ms": str(self.ms),
            "out": str(self.out),
            "seed": self.seed and str(self.seed),
            "grams": self.grams and str(self.grams),
            "allow_foreign_grams": self.allow_foreign_grams,
            "allow_other_task_grams": self.allow_other_task_grams,
        }


def describe_methods() -> str:
    """The registry as text: every method's summary, paper, inputs and parameters, then the shared options."""
    from vlmerge.merging import METHODS

    lines = []
    for name, spec in sorted(METHODS.items()):
        needs = ["MS"] + (["seed"] if spec.needs_seed else []) + (["grams"] if spec.needs_grams else [])
        lines += [f"{name}: {spec.summary}", f"    paper: {spec.paper}", f"    inputs: {', '.join(needs)}"]
        lines += [f"    {p.name}={to_json(p.default)}  {p.help}" for p in spec.params]
    lines.append("options for every method:")
    lines += [f"    {p.name}={to_json(p.default)}  {p.help}" for p in SELECTION_PARAMS]
    return "\n".join(lines)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key.strip(), value.strip()


def parse_args(argv: list[str] | None) -> MergeConfig | None:
    """The validated config, or None for ``--list``."""
    parser = argparse.ArgumentParser(prog="python -m vlmerge.merge", description=__doc__.split("\n")[0])
    parser.add_argument("--list", action="store_true", help="print the registered methods and exit")
    parser.add_argument("--method", help="merge method (see --list)")
    parser.add_argument(
        "--param",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="a method or shared parameter; repeat for several",
    )
    parser.add_argument("--ms", type=Path, help="the modality-specific (MS) checkpoint")
    parser.add_argument("--seed", type=Path, help="the seed (MA) checkpoint, for task-vector methods")
    parser.add_argument("--grams", type=Path, help="gram statistics, for RegMean")
    parser.add_argument("--out", type=Path, help="merged checkpoint (.safetensors; sidecar .json beside it)")
    parser.add_argument(
        "--allow-foreign-grams",
        action="store_true",
        help="accept grams collected on another checkpoint of the same architecture",
    )
    parser.add_argument(
        "--allow-other-task-grams",
        action="store_true",
        help="accept grams collected on another task's data than the used_experts_only task",
    )
    add_experiment_argument(parser)
    args = parser.parse_args(argv)
    if args.list:
        return None
    missing = [f"--{n}" for n in ("method", "ms", "out") if getattr(args, n) is None]
    if missing:
        parser.error(f"merging needs {', '.join(missing)}")
    params = dict(args.param)
    if len(params) != len(args.param):
        parser.error("a --param key is given twice")
    return MergeConfig(
        args.method,
        params,
        args.ms,
        args.out,
        args.seed,
        args.grams,
        args.allow_foreign_grams,
        args.allow_other_task_grams,
    )


def _check_early(config: MergeConfig) -> None:
    """Method, parameters and required inputs, before any large file is read."""
    from vlmerge.merging import MergeError, get_method

    spec = get_method(config.method)
    shared = {p.name for p in SELECTION_PARAMS}
    spec.resolve({k: v for k, v in config.params.items() if k not in shared})
    if spec.needs_seed and config.seed is None:
        raise MergeError(f"method {config.method!r} needs --seed (the seed MA checkpoint)")
    if spec.needs_grams and config.grams is None:
        raise MergeError(f"method {config.method!r} needs --grams (python -m vlmerge.grams)")


def _verified_sha256(path: Path) -> str:
    """The weights' sha256 from the sidecar, which ``verify_state`` checks (or queues a check of)."""
    from vlmerge.model.checkpoint import sidecar_path

    return str(json.loads(sidecar_path(path).read_text())["weights_sha256"])


def _return_freed_memory() -> None:
    """Have glibc hand every block of 64 KiB or more back to the system when it is freed.

    A streamed merge allocates and frees tensors of a few sizes, group after group; glibc's adaptive
    threshold soon serves them from its heap, which keeps freed blocks (×1.3 the peak RSS at the base
    preset). A fixed threshold maps each large block on its own and unmaps it on free. No-op off glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        return
    if mallopt is not None:
        mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
        mallopt(-1, 0)  # M_TRIM_THRESHOLD: return the heap's free top at once


def run(config: MergeConfig) -> None:
    _return_freed_memory()
    from vlmerge.model.checkpoint import background_checksums

    # The inputs' sha256 checks run on a second thread while the merge streams the same files; every
    # check has passed before anything is written.
    with background_checksums() as checksums:
        try:
            _merge(config, checksums)
        except Exception:
            checksums.verify()  # an input swapped under its sidecar explains a failure better than its symptom
            raise


def _merge(config: MergeConfig, checksums: BackgroundChecksums) -> None:
    from vlmerge.files.grams import open_grams
    from vlmerge.merging.apply import merge_files
    from vlmerge.merging.errors import MergeError
    from vlmerge.merging.stream import TensorFile
    from vlmerge.merging.validate import check_grams_task
    from vlmerge.model import Sharing, expert_layout
    from vlmerge.model.checkpoint import CheckpointMeta, save_checkpoint, verify_state
    from vlmerge.runtime import provenance

    given = [
        *with_sidecar("--ms", config.ms),
        *with_sidecar("--seed", config.seed),
        *with_sidecar("--grams", config.grams),
    ]
    check_outputs(with_sidecar("--out", config.out), given)
    _check_early(config)
    meta = verify_state(config.ms, checksums)
    if meta.sharing is Sharing.SHARED:
        raise MergeError(f"{config.ms} is a modality-agnostic (MA) checkpoint; --ms needs a modality-specific one")
    inputs = {"ms": _verified_sha256(config.ms)}
    seed = grams = None
    if config.seed is not None:
        seed_meta = verify_state(config.seed, checksums)
        if seed_meta.sharing is not Sharing.SHARED:
            raise MergeError(f"{config.seed} is {seed_meta.sharing.value}; --seed needs the MA seed checkpoint")
        if seed_meta.preset != meta.preset:
            raise MergeError(
                f"--seed {config.seed} is preset {seed_meta.preset}, --ms {config.ms} is preset {meta.preset}"
            )
        seed = TensorFile(config.seed, "seed state dict")
        inputs["seed"] = _verified_sha256(config.seed)
    if config.grams is not None:
        grams, record = open_grams(config.grams, checksums)
        if record.get("checkpoint_sha256") != inputs["ms"] and not config.allow_foreign_grams:
            raise MergeError(
                f"{config.grams} was collected on another checkpoint than {config.ms} "
                "(--allow-foreign-grams accepts that)"
            )
        if not config.allow_other_task_grams:
            used = resolve_selection({k: v for k, v in config.params.items() if k == "used_experts_only"})
            check_grams_task(record.get("task"), used["used_experts_only"], str(config.grams))
        inputs["grams"] = record["weights_sha256"]
    try:
        merged = merge_files(
            config.method,
            TensorFile(config.ms, "MS state dict"),
            seed_file=seed,
            grams=grams,
            layout=expert_layout(meta.config, meta.sharing),
            **config.params,
        )
    except MergeError as err:
        raise MergeError(f"{config.ms}: {err}") from err
    checksums.verify()
    extra = {"merge": merged.diagnostics, "provenance": provenance("merge", config.resolved())}
    out_meta = CheckpointMeta(
        meta.preset, meta.overrides, Sharing.SHARED, meta.heads, meta.token_types, meta.steps, inputs, extra
    )
    save_checkpoint(config.out, merged.state, out_meta)
    log.info("wrote %s (%s)", config.out, config.method)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    if config is None:
        print(describe_methods())
        return 0
    return run_stage("merge", lambda: run(config))


if __name__ == "__main__":
    raise SystemExit(main())
