"""``python -m vlmerge.bench [NAME ...]``: run the named benchmarks (default: all) and print figures.

``python -m vlmerge.bench demo [--log FILE]`` runs nothing: it reports where a finished workflow run (by
default the newest under ``.snakemake/log``) spent its time, rule by rule."""

from __future__ import annotations

import argparse
import importlib

from vlmerge.runtime import setup_logging

BENCHMARKS = ("prepare", "merge", "grams", "pretrain", "startup")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlmerge.bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)"
    )
    parser.add_argument("--log", help="with `demo`: the Snakemake log to read (default: the newest)")
    args = parser.parse_args(argv)
    if args.names == ["demo"]:
        from vlmerge.bench import demo

        setup_logging()
        demo.run(args.log)
        return 0
    if args.log:
        parser.error("--log goes with `demo` alone")
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    setup_logging()
    for name in args.names or BENCHMARKS:
        importlib.import_module(f"vlmerge.bench.{name}").run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
