"""File names the report writes, in one place: the CLI writes them, the workflow declares them.

Pure Python (imported at Snakemake start-up).
"""

from __future__ import annotations

from collections.abc import Sequence

from vlmerge.report.distances import METRICS
from vlmerge.report.sweeps import Sweep

MAIN, SHARING, SEED, DISTANCE = "main", "sharing", "seed_steps", "distance"
ZEROSHOT = "zeroshot"
TABLE_SUFFIXES = (".csv", ".md", ".tex")
PLOT_SUFFIXES = (".svg", ".png")


def sweep_stem(sweep: Sweep) -> str:
    return f"sweep_{sweep.name}"


def sweep_zeroshot_stem(sweep: Sweep) -> str:
    """The sweep's plot on the zero-shot retrieval metric (beside ``sweep_stem``'s fine-tuned one)."""
    return f"{sweep_stem(sweep)}_{ZEROSHOT}"


def distance_plot(metric: str) -> str:
    return f"{DISTANCE}_{metric}"


def table_stems(sweeps: Sequence[Sweep], sharing: bool, seed: bool, zeroshot: bool = False) -> list[str]:
    """Stems of the tables: main, zero-shot retrieval (``zeroshot``), each sweep, and the ablations that
    are switched on.

    Any ablation (``sharing`` or ``seed``) also gives the distance table: its lineages are the points.
    """
    stems = [MAIN, *([ZEROSHOT] if zeroshot else []), *(sweep_stem(s) for s in sweeps)]
    stems += [SHARING] if sharing else []
    stems += [SEED] if seed else []
    stems += [DISTANCE] if sharing or seed else []
    return stems


def plot_stems(sweeps: Sequence[Sweep], sharing: bool, seed: bool, zeroshot: bool = False) -> list[str]:
    """Stems of the plots (each written with every ``PLOT_SUFFIXES``): one line plot per sweep (and one
    more on the zero-shot metric with ``zeroshot``) and for seed length, one scatter plot per distance metric."""
    stems = [sweep_stem(s) for s in sweeps]
    stems += [sweep_zeroshot_stem(s) for s in sweeps] if zeroshot else []
    stems += [SEED] if seed else []
    stems += [distance_plot(m) for m in METRICS] if sharing or seed else []
    return stems
