"""Benchmark: the scheduler scraping 200 Redis targets on a 15-second interval.

Starts a few local redis-servers (no persistence, loopback ports), points ``--targets``
redis collectors at them round-robin, runs the scheduler for ``--seconds`` and prints
the CPU this process used per wall second (getrusage) and the scrape-time p99 taken from
the ``redis.scrape_duration_seconds`` samples delivered::

    .venv/bin/python bench/bench_scrape.py [--targets 200] [--interval 15] [--seconds 60]

The goal is at most one core (1.0 CPU s per wall s) for 200 targets.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis

from collectors.redis import RedisCollector
from collectors.scheduler import Scheduler
from tillwatch.sample import SampleBatch


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_servers(count: int, directory: Path) -> list[tuple[subprocess.Popen[bytes], int]]:
    """Start ``count`` redis-servers and wait until each answers PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed: run scripts/install-system-deps.sh")
    servers = []
    for _ in range(count):
        port = free_port()
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(directory)]
        servers.append((subprocess.Popen(command, stdout=subprocess.DEVNULL), port))
    for _, port in servers:
        _wait_for_ping(port)
    return servers


def _wait_for_ping(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    with redis.Redis(port=port, socket_timeout=1) as client:
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
    sys.exit(f"redis-server on port {port} did not answer PING within {timeout:.0f}s")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(targets: int, interval: float, seconds: float, servers: int, workers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-scrape-") as tmp:
        processes = start_servers(servers, Path(tmp))
        try:
            durations, batches = measure(processes, targets, interval, seconds, workers)
        finally:
            for process, _ in processes:
                process.terminate()
                process.wait(timeout=10)
    report(durations, batches, targets)


def measure(processes, targets: int, interval: float, seconds: float, workers: int):
    collectors = [
        (RedisCollector(labels={"service": "redis", "instance": f"bench-{n}"}, host="127.0.0.1",
                        port=processes[n % len(processes)][1]), interval)
        for n in range(targets)
    ]
    durations: list[float] = []
    batches = [0]

    def on_batch(batch: SampleBatch) -> None:
        batches[0] += 1
        for sample in batch.samples():
            if sample.signal == "redis.scrape_duration_seconds":
                durations.append(sample.value)

    scheduler = Scheduler(collectors, on_batch=on_batch, workers=workers, timeout=interval)
    cpu_before, wall_before = cpu_seconds(), time.monotonic()
    scheduler.start()
    time.sleep(seconds)
    scheduler.stop()
    cpu, wall = cpu_seconds() - cpu_before, time.monotonic() - wall_before
    print(f"wall {wall:.1f} s, CPU {cpu:.2f} s, CPU per wall second {cpu / wall:.3f}")
    return durations, batches[0]


def report(durations: list[float], batches: int, targets: int) -> None:
    if not durations:
        sys.exit("no scrape finished: is the run shorter than the interval?")
    ms = np.asarray(durations) * 1000
    p50, p99 = np.quantile(ms, [0.5, 0.99])
    print(f"targets {targets}, batches {batches}, "
          f"scrape p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {ms.max():.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--interval", type=float, default=15.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    run(args.targets, args.interval, args.seconds, args.servers, args.workers)


if __name__ == "__main__":
    main()
