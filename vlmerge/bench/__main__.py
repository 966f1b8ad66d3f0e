"""``python -m vlmerge.bench [NAME ...]``: run the named benchmarks (default: all) and print figures."""

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
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    setup_logging()
    for name in args.names or BENCHMARKS:
        importlib.import_module(f"vlmerge.bench.{name}").run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
