"""Checkpoints: weights as safetensors plus a JSON sidecar that says how to rebuild the model.

``x.safetensors`` holds the state dict; ``x.json`` holds preset, config overrides, sharing layout,
heads, token types, training steps, config hash, git SHA, the experiment that wrote it, the checksums
of the inputs that made it and of the weights file itself.

The two files are one unit (:func:`~vlmerge.runtime.atomic.atomic_pair`): both are written under
temporary names, then the weights and then the sidecar are renamed into place, so a kill leaves the old
pair, or new weights that the old sidecar does not describe — which loading refuses ("weights and
sidecar are from different writes"), like any other mismatch. Loading names the file on every failure
(no sidecar, a directory, truncated or not safetensors, from another experiment), checks the weights'
sha256 once per process and file version, and is strict.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from vlmerge.model.config import ModelConfig, config_hash, model_config
from vlmerge.model.errors import CheckpointError, ModelConfigError
from vlmerge.model.heads import Heads
from vlmerge.model.layout import Sharing
from vlmerge.model.model import VLModel
from vlmerge.runtime import sha256_file
from vlmerge.runtime.atomic import atomic_pair
from vlmerge.runtime.checksums import BackgroundChecksums
from vlmerge.runtime.experiment import RECORD_KEY, check_experiment, experiment_record
from vlmerge.runtime.logs import git_sha

FORMAT = 1


@dataclass(frozen=True)
class CheckpointMeta:
    """What a sidecar records. ``inputs``: name → sha256; ``extra``: the writing stage's own record."""

    preset: str
    overrides: dict[str, Any]
    sharing: Sharing
    heads: Heads
    token_types: int = 2
    steps: int = 0
    inputs: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> ModelConfig:
        return model_config(self.preset, **self.overrides)

    def to_json(self) -> dict[str, Any]:
        record = dataclasses.asdict(self) | {"sharing": self.sharing.value, "format": FORMAT}
        config = self.config  # the resolved sizes, for readers; rebuilding uses preset + overrides
        return record | {
            "config": dataclasses.asdict(config),
            "git_sha": git_sha(),
            "config_hash": config_hash(config, self.sharing.value),
        }

    @classmethod
    def from_json(cls, record: dict[str, Any], source: Path) -> CheckpointMeta:
        if record.get("format") != FORMAT:
            raise CheckpointError(f"{source}: sidecar format {record.get('format')!r}, expected {FORMAT}")
        try:
            meta = cls(
                record["preset"],
                record["overrides"],
                Sharing.parse(record["sharing"]),
                Heads(**record["heads"]),
                record["token_types"],
                record["steps"],
                record["inputs"],
                record["extra"],
            )
            expected = config_hash(meta.config, meta.sharing.value)
        except (KeyError, TypeError, ModelConfigError) as err:
            raise CheckpointError(f"{source}: malformed sidecar ({type(err).__name__}: {err})") from err
        if record.get("config_hash") != expected:
            raise CheckpointError(
                f"{source}: config_hash does not match its preset and overrides "
                "(the preset definitions changed since it was written)"
            )
        return meta


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    return Path(path).with_suffix(".json")


def checkpoint_meta(
    model: VLModel,
    *,
    steps: int = 0,
    inputs: Mapping[str, str | os.PathLike[str]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> CheckpointMeta:
    """Describe ``model``; ``inputs`` are files (name → path) whose checksums are recorded."""
    checksums = {name: sha256_file(p) for name, p in sorted((inputs or {}).items())}
    return CheckpointMeta(
        model.config.preset,
        model.config.overrides(),
        model.sharing,
        model.heads,
        model.token_type_embeddings.num_embeddings,
        steps,
        checksums,
        dict(extra or {}),
    )


def save_checkpoint(
    path: str | os.PathLike[str],
    state: Mapping[str, torch.Tensor],
    meta: CheckpointMeta,
    *,
    experiment: str | None = None,
) -> None:
    """Write ``state`` to ``path`` (safetensors) and ``meta`` to its sidecar, as one unit.

    The sidecar records the running experiment, or ``experiment`` when given (imports say ``"released"``).
    """
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    record = meta.to_json() | (experiment_record() if experiment is None else {RECORD_KEY: experiment})
    digest = atomic_pair(path, sidecar_path(path), lambda tmp: save_file(tensors, str(tmp)), record)
    _VERIFIED[_version(Path(path))] = digest


def save_model(path: str | os.PathLike[str], model: VLModel, *, experiment: str | None = None, **meta: Any) -> None:
    """:func:`save_checkpoint` of ``model.state_dict()``; ``meta`` as for :func:`checkpoint_meta`."""
    save_checkpoint(path, model.state_dict(), checkpoint_meta(model, **meta), experiment=experiment)


# (resolved path, size, mtime) of a weights file → its sha256, computed once per process and file version
_VERIFIED: dict[tuple[str, int, int], str] = {}


def _version(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def weights_checksum(path: str | os.PathLike[str]) -> str:
    """The sha256 of the weights file ``path``, cached by path, size and modification time."""
    key = _version(Path(path))
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256_file(path)
    return _VERIFIED[key]


def _read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    sidecar = sidecar_path(path)
    if Path(path).suffix == ".json":
        raise CheckpointError(f"{path} is a sidecar; name the weights file (.safetensors) beside it")
    if Path(path).is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a weights file")
    try:
        record = json.loads(sidecar.read_text())
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint {path} has no sidecar {sidecar} (or does not exist)") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read the sidecar {sidecar} of {path}: {err}") from err
    if not isinstance(record, dict):
        raise CheckpointError(f"{sidecar}: the sidecar of {path} is not a JSON object")
    return record


def _checked(path: str | os.PathLike[str], record: dict[str, Any]) -> CheckpointMeta:
    meta = CheckpointMeta.from_json(record, sidecar_path(path))
    check_experiment(path, record, preset=meta.preset)
    return meta


def read_meta(path: str | os.PathLike[str]) -> CheckpointMeta:
    """The sidecar of checkpoint ``path``, validated (and from this run's experiment)."""
    return _checked(path, _read_sidecar(path))


def _pair_error(path: str | os.PathLike[str]) -> CheckpointError:
    return CheckpointError(
        f"{path} and {sidecar_path(path)}: weights and sidecar are from different writes "
        "(the sidecar records another weights_sha256; an interrupted or foreign write — rerun the stage "
        "that makes it)"
    )


def _check_weights_exist(path: str | os.PathLike[str]) -> None:
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint weights {path} do not exist (its sidecar {sidecar_path(path)} does)")


def verify_pair(path: str | os.PathLike[str], record: Mapping[str, Any]) -> str:
    """Check that the weights file ``path`` is the one its sidecar ``record`` describes; returns the sha256."""
    _check_weights_exist(path)
    digest = weights_checksum(path)
    if record.get("weights_sha256") != digest:
        raise _pair_error(path)
    return digest


def _remember_checksum(path: Path, digest: str) -> None:
    """``BackgroundChecksums`` callback: cache a checked file's sha256 as :func:`weights_checksum` does."""
    _VERIFIED[_version(path)] = digest


def load_state(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """The state dict (CPU) and sidecar of a checkpoint, after checking they belong together."""
    record = _read_sidecar(path)
    meta = _checked(path, record)
    verify_pair(path, record)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"cannot read {path} as safetensors (truncated or another format): {err}") from err
    return state, meta


def verify_state(path: str | os.PathLike[str], checksums: BackgroundChecksums | None = None) -> CheckpointMeta:
    """The sidecar of a checkpoint after the checks of :func:`load_state` (the pair, and a header
    safetensors accepts), reading no tensor: for readers that stream the file tensor by tensor.

    With ``checksums`` the pair check (the weights' sha256 against the sidecar's) is queued there
    instead of done now; the caller must ``checksums.verify()`` before it writes anything.
    """
    record = _read_sidecar(path)
    meta = _checked(path, record)
    if checksums is None or _version(Path(path)) in _VERIFIED:
        verify_pair(path, record)
    else:
        _check_weights_exist(path)
        checksums.add(path, str(record.get("weights_sha256")), lambda _: _pair_error(path))
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"cannot read {path} as safetensors (truncated or another format): {err}") from err
    return meta


def background_checksums() -> BackgroundChecksums:
    """A :class:`BackgroundChecksums` whose matched files join this process's checksum cache."""
    return BackgroundChecksums(_remember_checksum)


def strict_load(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str | os.PathLike[str]) -> None:
    """``load_state_dict(strict=True)`` with one readable error listing every key and shape problem."""
    own = model.state_dict()
    problems = [f"missing {k}" for k in own if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in own]
    problems += [
        f"shape of {k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if problems:
        shown = "; ".join(problems[:12]) + (f"; … {len(problems) - 12} more" if len(problems) > 12 else "")
        raise CheckpointError(f"{source} does not fit the model: {shown}")
    model.load_state_dict(state, strict=True)


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[VLModel, CheckpointMeta]:
    """Rebuild the model its sidecar describes and strict-load the weights into it."""
    state, meta = load_state(path)
    model = VLModel(meta.config, meta.sharing, meta.heads)
    model.grow_token_types(meta.token_types)
    strict_load(model, state, path)
    return model.to(device), meta
