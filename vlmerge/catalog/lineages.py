"""Names of the ablation lineages, shared by the workflow and the report (docs/overview.md ablations).

The main lineage is seed → ``ms_<sharing>`` (the configured layout) → merges. An ablation changes
one thing upstream of the merge, and every name downstream carries it after an ``@``:

- sharing layout ``X``: MS run ``ms_X`` from the configured seed; methods ``<name>@ms_X``;
- seed length ``N`` steps: seed run ``seedN``, MS run ``ms_<sharing>@seedN``; methods ``<name>@seedN``.

``<name>`` is a ``merge.methods`` entry or ``ms`` (the MS model fine-tuned as MS). A variant equal to
the configured run is the main lineage itself and gets no name of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SEPARATOR = "@"
SHARINGS = ("modality_specific", "attn", "ffn", "ln")
_VARIANT = re.compile(r"ms_(?P<sharing>[a-z_]+)|seed(?P<steps>[0-9]+)")
_MS_RUN = re.compile(r"ms_(?P<sharing>[a-z_]+?)(@seed(?P<steps>[0-9]+))?")


@dataclass(frozen=True)
class Defaults:
    """The configured main lineage: MS sharing layout and seed length."""

    sharing: str
    seed_steps: int


@dataclass(frozen=True)
class Lineage:
    """Where a method's weights come from; ``variant`` is None for the main lineage."""

    sharing: str
    seed_steps: int
    variant: str | None


def sharing_variant(sharing: str) -> str:
    return f"ms_{sharing}"


def seed_variant(steps: int) -> str:
    return f"seed{steps}"


def split_method(method: str) -> tuple[str, str | None]:
    """``'interpolation@ms_attn'`` → ``('interpolation', 'ms_attn')``; no ``@`` → ``(method, None)``."""
    base, sep, variant = method.partition(SEPARATOR)
    return base, (variant if sep else None)


def resolve(variant: str | None, defaults: Defaults) -> Lineage:
    """The sharing layout and seed length of a variant name (None: the main lineage)."""
    if variant is None:
        return Lineage(defaults.sharing, defaults.seed_steps, None)
    match = _VARIANT.fullmatch(variant)
    if match is None or (match["sharing"] is not None and match["sharing"] not in SHARINGS):
        raise ValueError(f"unknown lineage variant {variant!r}: expected ms_<{'|'.join(SHARINGS)}> or seed<steps>")
    if match["sharing"] is not None:
        return Lineage(match["sharing"], defaults.seed_steps, variant)
    return Lineage(defaults.sharing, int(match["steps"]), variant)


def ms_run(variant: str | None, defaults: Defaults) -> str:
    """The pre-training run name of the MS model of a lineage."""
    lineage = resolve(variant, defaults)
    if lineage.seed_steps != defaults.seed_steps:
        return f"ms_{lineage.sharing}{SEPARATOR}{seed_run(lineage.seed_steps, defaults)}"
    return f"ms_{lineage.sharing}"


def seed_run(steps: int, defaults: Defaults) -> str:
    """The seed run of ``steps`` steps: ``seed`` for the configured length, else ``seed<steps>``."""
    return "seed" if steps == defaults.seed_steps else seed_variant(steps)


def variant_of_ms_run(run: str, defaults: Defaults) -> str | None:
    """Inverse of :func:`ms_run` (a distance file is named after its MS run)."""
    match = _MS_RUN.fullmatch(run)
    if match is None or match["sharing"] not in SHARINGS:
        raise ValueError(f"{run!r} is not an MS run name ms_<sharing>[@seed<steps>]")
    sharing, steps = match["sharing"], int(match["steps"] or defaults.seed_steps)
    if sharing != defaults.sharing and steps != defaults.seed_steps:
        raise ValueError(f"{run!r} changes both the sharing layout and the seed length; ablations change one")
    if sharing != defaults.sharing:
        return sharing_variant(sharing)
    return None if steps == defaults.seed_steps else seed_variant(steps)
