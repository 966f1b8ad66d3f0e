"""``python -m vlmerge.bench [NAME ...]``: run the named benchmarks (default: all) and print figures.

``python -m vlmerge.bench demo [--log FILE] [--against FILE]`` runs nothing: it reports where a finished
workflow run (by default the newest under ``.snakemake/log``) spent its time, rule by rule, and with
``--against`` how it compares with a baseline run's log."""

from __future__ import annotations

import argparse
import importlib

from vlmerge.bench import grams, merge
from vlmerge.runtime import setup_logging

BENCHMARKS = ("prepare", "merge", "grams", "pretrain", "startup")
# Benchmarks whose figures are the fastest and median of repeated rounds: ``--rounds`` sets how many.
ROUNDED = ("merge", "grams")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlmerge.bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)"
    )
    parser.add_argument("--log", help="with `demo`: the Snakemake log to read (default: the newest)")
    parser.add_argument(
        "--against", metavar="LOG", help="with `demo`: a baseline run's Snakemake log, compared rule by rule"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"with {' and '.join(ROUNDED)}: rounds of every timed variant (default: merge {merge.ROUNDS}, "
        f"grams {grams.ROUNDS}); each figure is the fastest and the median round",
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and (args.rounds < 1 or not set(args.names) <= set(ROUNDED) or not args.names):
        parser.error(f"--rounds is a positive count and goes with {' or '.join(ROUNDED)} alone")
    if args.names == ["demo"]:
        from vlmerge.bench import demo
        from vlmerge.runtime.stage import run_stage

        return run_stage("bench", lambda: demo.run(args.log, args.against))
    if args.log or args.against:
        parser.error("--log and --against go with `demo` alone")
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    setup_logging()
    for name in args.names or BENCHMARKS:
        module = importlib.import_module(f"vlmerge.bench.{name}")
        if args.rounds is None:
            module.run()
        else:
            module.run(rounds=args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
