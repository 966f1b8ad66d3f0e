"""Typed stage settings: one frozen pydantic model per stage, validated once, at the edge.

A stage's hyper-parameters are the fields of a :class:`Settings` model (defaults, ranges and help in one
place). The same model reads them from every source:

- the workflow hands the stage its slice of ``config.yaml`` as one JSON argument, ``--config JSON``
  (Snakemake's params trigger compares that string, so a changed value reruns exactly the jobs that use it);
- by hand, every field is also a flag (``--lr 1e-4``, ``--augment/--no-augment``), generated from the model
  by :func:`add_settings_arguments`; a flag overrides the same key of ``--config``.

Paths are never settings: stages take them as explicit flags. Nor is the experiment a run belongs to
(:mod:`vlmerge.runtime.experiment`): :func:`add_settings_arguments` adds ``--experiment NAME`` beside the
settings, and parsing it declares the experiment for the process. Any bad value or unknown key ends as one
:class:`~vlmerge.errors.ConfigError` line naming the key. Plain Python + pydantic: importing a stage's
settings never imports torch.
"""

from __future__ import annotations

import argparse
import json
import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError

from vlmerge.errors import ConfigError
from vlmerge.runtime.experiment import set_experiment

S = TypeVar("S", bound="Settings")


class Settings(BaseModel):
    """Base of every stage's settings: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def as_json(self) -> str:
        """Compact, key-sorted JSON of every field (what the workflow passes as ``--config``)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def validation_message(err: ValidationError, where: str = "") -> str:
    """A pydantic error as one line: ``where.key: problem; where.other: problem``."""
    parts = []
    for e in err.errors():
        key = ".".join(str(x) for x in e["loc"])
        path = f"{where}.{key}" if where and key else (where or key)
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(
            f"{path}: {msg}" + (f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else "")
        )
    return "; ".join(parts)


def build(model: type[S], values: dict[str, Any], where: str = "") -> S:
    """``model`` from ``values``, or a :class:`ConfigError` naming every bad key."""
    try:
        return model.model_validate(values)
    except ValidationError as err:
        raise ConfigError(validation_message(err, where)) from None


def _plain(annotation: Any) -> Any:
    """``X | None`` → ``X``."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _items(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _pairs(text: str) -> dict[str, str]:
    """``"a=1,b=2"`` → ``{"a": "1", "b": "2"}``."""
    out = {}
    for item in _items(text):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE[,KEY=VALUE…], got {text!r}")
        out[key.strip()] = value.strip()
    return out


class _MergePairs(argparse.Action):
    """A repeated ``--flag a=1 --flag b=2`` adds up to ``{"a": "1", "b": "2"}``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, {**getattr(namespace, self.dest, {}), **values})


class _Experiment(argparse.Action):
    """``--experiment NAME``: declared for the process as soon as it is parsed."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if not str(values).strip():
            parser.error("--experiment: an empty name")
        set_experiment(str(values))
        setattr(namespace, self.dest, str(values))


def add_experiment_argument(parser: argparse.ArgumentParser) -> None:
    """``--experiment NAME``: the experiment this run belongs to, recorded in what it writes and compared
    with what it reads (an input made under another experiment is refused)."""
    parser.add_argument(
        "--experiment",
        action=_Experiment,
        default=None,
        metavar="NAME",
        help="the experiment this run belongs to (the config's `experiment`); inputs made under another "
        "are refused (default: none, compare nothing)",
    )


def add_settings_arguments(parser: argparse.ArgumentParser, model: type[Settings]) -> None:
    """``--config JSON`` plus one flag per field of ``model`` (absent flags keep ``--config``'s or the default),
    and ``--experiment``."""
    add_experiment_argument(parser)
    group = parser.add_argument_group(
        "settings", f"fields of {model.__name__}; --config gives them as one JSON object, a flag overrides its key"
    )
    group.add_argument(
        "--config",
        type=json.loads,
        default={},
        metavar="JSON",
        help="the settings as a JSON object (what the workflow passes)",
    )
    for name, field in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = _plain(field.annotation)
        default = "required" if field.is_required() else f"default: {field.get_default(call_default_factory=True)!r}"
        help_text = f"{field.description or ''} ({default})".strip()
        common: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        origin = get_origin(kind)
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif origin is Literal:
            group.add_argument(flag, choices=[str(a) for a in get_args(kind)], **common)
        elif origin in (tuple, list):
            group.add_argument(flag, type=_items, metavar="A,B,…", **common)
        elif origin is dict or kind is dict:
            group.add_argument(flag, type=_pairs, action=_MergePairs, metavar="K=V,…", **common)
        else:
            group.add_argument(flag, metavar=getattr(kind, "__name__", "VALUE").upper(), **common)


def settings_from_args(args: argparse.Namespace, model: type[S]) -> S:
    """The validated settings: ``--config`` overridden by the flags given."""
    if not isinstance(args.config, dict):
        raise ConfigError(f"--config: expected a JSON object, got {type(args.config).__name__}")
    given = {name: getattr(args, name) for name in model.model_fields if hasattr(args, name)}
    return build(model, {**args.config, **given})


__all__ = [
    "Settings",
    "add_experiment_argument",
    "add_settings_arguments",
    "build",
    "settings_from_args",
    "validation_message",
]
