"""Benchmark: encode and decode of sample batches with the wire codec.

    .venv/bin/python bench/bench_codec.py [--samples 1000000] [--series 10000]

Batches hold two scrapes of every series (20,000 samples for 10,000 series), the size a
collector fleet publishes per message; one decoder is reused, as a consuming stage does.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from pipeline.codec import Decoder, encode
from tillwatch.sample import SampleBatch, Series

SCRAPES_PER_BATCH = 2


def make_batches(n_samples: int, n_series: int, seed: int = 11) -> list[SampleBatch]:
    """Batches of ``SCRAPES_PER_BATCH`` scrapes of every series, built before timing."""
    rng = np.random.default_rng(seed)
    series = [Series.of("redis.hit_ratio", {"instance": f"cache-{i}"}) for i in range(n_series)]
    per_batch = n_series * SCRAPES_PER_BATCH
    index = np.tile(np.arange(n_series, dtype=np.uint32), SCRAPES_PER_BATCH)
    start = 1.9e9
    batches = []
    for number in range(-(-n_samples // per_batch)):
        size = min(per_batch, n_samples - number * per_batch)
        ts = np.full(size, start + 15.0 * number)
        batches.append(SampleBatch(series, index[:size], ts, rng.random(size)))
    return batches


def codec_round_trip(n_samples: int, n_series: int) -> dict[str, float]:
    """Encode then decode every batch; return samples/s and peak RSS in MiB."""
    batches = make_batches(n_samples, n_series)
    decoder = Decoder()

    started = time.perf_counter()
    decoded = sum(len(decoder.decode(encode(batch)).batch) for batch in batches)
    elapsed = time.perf_counter() - started

    assert decoded == n_samples, f"decoded {decoded} of {n_samples} samples"
    return {
        "samples": n_samples,
        "seconds": elapsed,
        "samples_per_second": n_samples / elapsed,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--series", type=int, default=10_000)
    args = parser.parse_args()
    print(json.dumps(codec_round_trip(args.samples, args.series)))


if __name__ == "__main__":
    main()
