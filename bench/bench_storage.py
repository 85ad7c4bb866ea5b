"""Benchmark: sink inserts into the embedded ClickHouse engine.

Writes ``n_samples`` samples spread over ``n_series`` series (one scrape of every series
per batch, as collectors emit them) through :class:`pipeline.sink.Sink` into a fresh
chDB directory, and prints rows per second and the process's peak RSS::

    .venv/bin/python bench/bench_storage.py [--samples 1000000] [--series 10000]

Run it in its own process: chDB binds one engine path per process.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.sink import Sink
from pipeline.storage import Storage
from tillwatch.sample import SampleBatch, Series

SIGNALS = (
    "postgres.replication_lag_seconds",
    "redis.hit_ratio",
    "traefik.latency_p95_seconds",
    "queue.depth",
    "kpi.orders_per_minute",
)
SCRAPE_SECONDS = 15.0


def scrape_batches(n_samples: int, n_series: int, seed: int = 7) -> list[SampleBatch]:
    """Build the batches up front, so the timing covers only the sink and the engine."""
    rng = np.random.default_rng(seed)
    series = [
        Series.of(SIGNALS[i % len(SIGNALS)], {"service": f"svc{i % 40}", "instance": f"i{i}"})
        for i in range(n_series)
    ]
    index = np.arange(n_series, dtype=np.uint32)
    start = time.time() - n_samples / n_series * SCRAPE_SECONDS
    batches = []
    for scrape in range(-(-n_samples // n_series)):
        size = min(n_series, n_samples - scrape * n_series)
        ts = np.full(size, start + scrape * SCRAPE_SECONDS)
        batches.append(SampleBatch(series, index[:size], ts, rng.normal(100.0, 5.0, size)))
    return batches


def embedded_inserts(n_samples: int, n_series: int, path: str | Path) -> dict:
    """Insert through the sink into a chDB engine at ``path``.

    Args:
        n_samples: samples to write.
        n_series: distinct series they belong to.
        path: the engine's data directory (must be this process's only chDB path).

    Returns:
        ``rows``, ``seconds``, ``rows_per_second``, ``stored`` (counted back) and
        ``peak_rss_mb``.
    """
    batches = scrape_batches(n_samples, n_series)
    storage = Storage.open(f"chdb://{path}", database="bench")
    try:
        sink = Sink(storage, max_rows=200_000, max_seconds=60.0)
        started = time.perf_counter()
        for number, batch in enumerate(batches):
            sink.write(batch, token=f"bench/0/{number}")
        sink.close()
        seconds = time.perf_counter() - started
        stored = storage.client.query("SELECT count() FROM bench.samples").result_rows[0][0]
    finally:
        storage.close()
    return {
        "rows": n_samples,
        "seconds": seconds,
        "rows_per_second": n_samples / seconds,
        "stored": stored,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--path", help="chDB data directory (default: a temporary one)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="tillwatch-bench-") as scratch:
        result = embedded_inserts(args.samples, args.series, args.path or scratch)
    print(
        f"embedded sink inserts: {result['rows']:,} samples over {args.series:,} series "
        f"in {result['seconds']:.2f}s = {result['rows_per_second']:,.0f} rows/s; "
        f"stored {result['stored']:,}; peak RSS {result['peak_rss_mb']:.0f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
