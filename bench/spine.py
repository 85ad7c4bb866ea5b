"""The spine's four throughput figures, each in a fresh process, beside their targets.

    .venv/bin/python bench/spine.py [--samples 1000000] [--series 10000]

codec encode+decode, the memory:// round trip, the kafka:// round trip through a local
tansu broker with one consumer, and sink inserts into the embedded ClickHouse engine.
A fresh process per figure keeps each peak RSS its own (and chDB binds one path per
process).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

TARGETS = {"codec": 2_000_000, "memory": 1_000_000, "kafka": 300_000, "inserts": 1_000_000}


def _codec(n_samples: int, n_series: int) -> tuple[float, float]:
    from bench_codec import codec_round_trip

    result = codec_round_trip(n_samples, n_series)
    return result["samples_per_second"], result["peak_rss_mib"]


def _memory(n_samples: int, n_series: int) -> tuple[float, float]:
    from bench_stream import memory_round_trip

    result = memory_round_trip(n_samples, n_series)
    return result["samples_per_s"], result["peak_rss_mb"]


def _kafka(n_samples: int, n_series: int) -> tuple[float, float]:
    from bench_stream import _with_broker

    result = _with_broker(n_samples, n_series)
    return result["samples_per_s"], result["peak_rss_mb"]


def _inserts(n_samples: int, n_series: int) -> tuple[float, float]:
    from bench_storage import embedded_inserts

    with tempfile.TemporaryDirectory(prefix="tillwatch-bench-") as scratch:
        result = embedded_inserts(n_samples, n_series, scratch)
    return result["rows_per_second"], result["peak_rss_mb"]


FIGURES = {"codec": _codec, "memory": _memory, "kafka": _kafka, "inserts": _inserts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--series", type=int, default=10_000)
    args = parser.parse_args()

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    print(f"{args.samples:,} samples over {args.series:,} series\n")
    print(f"{'figure':<8} {'samples/s':>12} {'target':>12} {'peak RSS MiB':>13}  verdict")

    spawn = multiprocessing.get_context("spawn")
    for name, run in FIGURES.items():
        with spawn.Pool(1) as pool:
            rate, rss = pool.apply(run, (args.samples, args.series))
        verdict = "met" if rate >= TARGETS[name] else "below"
        print(f"{name:<8} {rate:>12,.0f} {TARGETS[name]:>12,} {rss:>13,.0f}  {verdict}")


if __name__ == "__main__":
    main()
