"""Converter throughput (images/s) and peak RSS at two dataset sizes.

The converter streams: peak RSS must not grow with the number of images. The baseline is the floor
of any converter, a child process that only reads every image file once, measured in the same run.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from vlmerge.bench.measure import Measurement, python_module, run_measured

log = logging.getLogger(__name__)

_READ_ALL = (
    "import sys, pathlib\n"
    "n = sum(len(p.read_bytes()) for p in sorted(pathlib.Path(sys.argv[1]).rglob('*')) if p.is_file())\n"
)


def _bench_size(work: Path, images: int) -> dict[str, float]:
    raw, out = work / f"raw{images}", work / f"arrow{images}"
    run_measured(
        python_module(
            "vlmerge.synth", "--out", str(raw), "--datasets", "sbu", "--count", f"sbu.train={images}", "--seed", "0"
        )
    )
    floor: Measurement = run_measured([sys.executable, "-c", _READ_ALL, str(raw / "sbu")])
    conv = run_measured(
        python_module("vlmerge.prepare", "--dataset", "sbu", "--raw", str(raw / "sbu"), "--out", str(out))
    )
    return {
        "images": images,
        "convert_s": conv.seconds,
        "images_per_s": images / conv.seconds,
        "peak_rss_mb": conv.peak_rss_mb,
        "read_floor_s": floor.seconds,
        "time_vs_floor": conv.seconds / floor.seconds,
        "floor_rss_mb": floor.peak_rss_mb,
    }


def run(sizes: tuple[int, ...] = (2000, 20000)) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="vlmerge-bench-") as tmp:
        rows = [_bench_size(Path(tmp), n) for n in sizes]
    print("\n## prepare: SBU converter, synthetic 48 px JPEGs")
    print(f"{'images':>8} {'conv s':>8} {'img/s':>8} {'peak RSS MB':>12} {'read-only s':>12} {'x floor':>8}")
    for r in rows:
        print(
            f"{r['images']:>8} {r['convert_s']:>8.2f} {r['images_per_s']:>8.0f} {r['peak_rss_mb']:>12.1f}"
            f" {r['read_floor_s']:>12.2f} {r['time_vs_floor']:>8.2f}"
        )
    growth = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    print(
        f"peak RSS {rows[-1]['images']} vs {rows[0]['images']} images: x{growth:.2f}"
        f" (dataset x{rows[-1]['images'] / rows[0]['images']:.0f})"
    )
    return rows
