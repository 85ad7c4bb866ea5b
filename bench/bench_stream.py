"""Stream round-trip benchmark: encode -> publish -> consume -> decode, per backend.

Run from the repository root::

    .venv/bin/python bench/bench_stream.py [--samples 1000000] [--series 10000]

It measures memory:// in this process and kafka:// through a tansu broker it starts on
a free port, each in a fresh process so the peak RSS belongs to that backend alone.
Targets on a two-core machine: memory >= 1M samples/s, Kafka >= 300k samples/s.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

# The broker fixture lives with the tests; the benchmark starts the same broker.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.codec import Decoder, encode  # noqa: E402
from pipeline.deadletter import decode_samples  # noqa: E402
from pipeline.stream import Consumer, Stream, open_stream  # noqa: E402
from tillwatch.sample import SampleBatch, Series  # noqa: E402

BATCH_SAMPLES = 20_000
TOPIC = "bench.samples"


def make_batches(n_samples: int, n_series: int, seed: int = 1) -> list[SampleBatch]:
    """Build scrape-like batches: every series once per round, rounds 15 s apart."""
    rng = np.random.default_rng(seed)
    series = [
        Series.of("postgres.tps", {"instance": f"db-{i % 50}", "database": f"shop_{i}"})
        for i in range(n_series)
    ]
    batches = []
    for start in range(0, n_samples, BATCH_SAMPLES):
        index = np.arange(start, min(start + BATCH_SAMPLES, n_samples))
        ts = 1.75e9 + (index // n_series) * 15.0
        series_ix = (index % n_series).astype(np.uint32)
        batches.append(SampleBatch(series, series_ix, ts, rng.random(index.size)))
    return batches


def _round_trip(stream: Stream, consumer: Consumer, batches: list[SampleBatch]) -> dict:
    expected = sum(len(batch) for batch in batches)

    def produce() -> None:
        for batch in batches:
            stream.publish(TOPIC, encode(batch))
        stream.flush(120)

    started = time.perf_counter()
    producer = threading.Thread(target=produce)
    producer.start()
    received, decoder = 0, Decoder()
    while received < expected:
        records = consumer.poll(timeout=1.0, max_records=100)
        received += sum(len(b) for b in decode_samples(records, decoder, stream, "bench"))
        consumer.commit()
    elapsed = time.perf_counter() - started
    producer.join()

    return {
        "samples": received,
        "seconds": round(elapsed, 3),
        "samples_per_s": round(received / elapsed),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def memory_round_trip(n_samples: int, n_series: int) -> dict:
    """Round trip through ``memory://`` with one consumer; returns throughput and RSS."""
    batches = make_batches(n_samples, n_series)
    stream = open_stream("memory://", partitions=4, max_buffered=10_000)
    consumer = stream.consumer(TOPIC, group="bench")
    result = _round_trip(stream, consumer, batches)
    stream.close()
    return {"backend": "memory", **result}


def kafka_round_trip(n_samples: int, n_series: int, bootstrap: str) -> dict:
    """Round trip through ``kafka://bootstrap`` with one consumer (joined before timing)."""
    batches = make_batches(n_samples, n_series)
    stream = open_stream(f"kafka://{bootstrap}", partitions=4, max_buffered=10_000)
    consumer = stream.consumer(TOPIC, group=f"bench-{time.time_ns()}")
    while not consumer.partitions:
        consumer.poll(timeout=1.0)
    result = _round_trip(stream, consumer, batches)
    consumer.close()
    stream.close()
    return {"backend": "kafka", **result}


def _with_broker(n_samples: int, n_series: int) -> dict:
    from tests.services.kafka import KafkaBroker

    broker = KafkaBroker(Path(tempfile.mkdtemp(prefix="bench-tansu-")))
    broker.start()
    try:
        return kafka_round_trip(n_samples, n_series, broker.bootstrap)
    finally:
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--series", type=int, default=10_000)
    args = parser.parse_args()

    # A fresh process per backend, so each peak RSS is that backend's own.
    spawn = multiprocessing.get_context("spawn")
    for run in (memory_round_trip, _with_broker):
        with spawn.Pool(1) as pool:
            result = pool.apply(run, (args.samples, args.series))
        print(
            f"{result['backend']:>6}: {result['samples']:,} samples in {result['seconds']}s"
            f" = {result['samples_per_s']:,} samples/s, peak RSS {result['peak_rss_mb']} MB"
        )


if __name__ == "__main__":
    main()
