"""Stage ``report``: tables and plots of the paper from result and distance JSONs.

    python -m vlmerge.report --results results/*/*.json --distances results/distance/*.json \\
        --sharing modality_specific --seed-steps 150 [--sweep NAME:METHOD:PARAM=entry,entry ...] \\
        --tables results/tables --plots results/plots

Writes ``main.{csv,md,tex}`` (methods without ``@`` in their name, in the order given, the trivial
baseline and the gap to MA); per ``--sweep`` a table and a line plot ``sweep_<NAME>``; from the
ablation lineages (methods ``<name>@<variant>``) ``sharing``, ``seed_steps`` (+ plot) and
``distance`` (Spearman's ρ, + one scatter plot per distance metric); from ``--zeroshot`` files the
``zeroshot`` table (retrieval before fine-tuning) and per sweep a plot ``sweep_<NAME>_zeroshot``. Each
plot is written as ``.svg`` and ``.png``. Bad input ends with a one-line error naming the file and key, and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vlmerge.catalog.lineages import SHARINGS, Defaults
from vlmerge.report.config import ReportConfig
from vlmerge.report.errors import ReportError
from vlmerge.report.sweeps import Sweep
from vlmerge.runtime import provenance, setup_logging

log = logging.getLogger(__name__)


def parse_sweep(text: str) -> Sweep:
    """``NAME:METHOD:PARAM=entry,entry,...`` (as :meth:`Sweep.arg` writes it)."""
    head, sep, names = text.partition("=")
    parts = head.split(":")
    entries = tuple(n for n in names.split(",") if n)
    if not sep or len(parts) != 3 or not all(parts) or len(entries) < 2:
        raise argparse.ArgumentTypeError(f"expected NAME:METHOD:PARAM=entry,entry[,...], got {text!r}")
    return Sweep(parts[0], parts[1], parts[2], entries)


def parse_args(argv: list[str] | None) -> ReportConfig:
    parser = argparse.ArgumentParser(prog="python -m vlmerge.report", description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, nargs="+", required=True, help="result JSONs (results/<task>/*.json)")
    parser.add_argument("--distances", type=Path, nargs="*", default=[], help="distance JSONs (results/distance/)")
    parser.add_argument(
        "--zeroshot",
        type=Path,
        nargs="*",
        default=[],
        help="zero-shot retrieval JSONs (results/zeroshot/<method>.json): the zeroshot table and sweep plots",
    )
    parser.add_argument(
        "--sweep",
        type=parse_sweep,
        action="append",
        default=[],
        help="NAME:METHOD:PARAM=entry,entry,... (merge entries ordered by PARAM)",
    )
    parser.add_argument("--sharing", choices=SHARINGS, required=True, help="the configured MS sharing layout")
    parser.add_argument("--seed-steps", type=int, required=True, help="the configured seed run length")
    parser.add_argument("--tables", type=Path, required=True, help="folder of the .csv/.md/.tex tables")
    parser.add_argument("--plots", type=Path, required=True, help="folder of the .svg/.png plots")
    args = parser.parse_args(argv)
    names = [s.name for s in args.sweep]
    if len(set(names)) != len(names):
        parser.error(f"--sweep names repeat: {names}")
    return ReportConfig(
        tuple(args.results),
        tuple(args.distances),
        tuple(args.sweep),
        Defaults(args.sharing, args.seed_steps),
        args.tables,
        args.plots,
        tuple(args.zeroshot),
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    from vlmerge.report.build import build  # pandas and matplotlib come with the run alone

    setup_logging()
    provenance("report", config.resolved())
    try:
        written = build(config)
    except ReportError as err:
        print(f"vlmerge.report: error: {err}", file=sys.stderr)
        return 2
    log.info("wrote %d files", len(written))
    return 0
