"""Throughput and state size of every tillwatch detector beside river and scikit-learn.

The stream: ``--series`` series of noisy daily sine waves at one sample per minute, one
sample per series per step (ratios in [0, 1] for the burn-rate rule). tillwatch's batch
detectors advance all series per step; the per-service forest scores services of
``--service-width`` series over a simulated day, one row per timestamp; river's
HalfSpaceTrees learns and scores one sample at a time (a sub-stream, it is slow);
scikit-learn's IsolationForest is fitted once on the first steps and then scores each
step's samples as a batch.

State per series: the table row for batch detectors; for the forests, the pickled model
(and, for the service forest, its window of rows) divided by the series it serves.

Usage: ``taskset -c 0 python bench/bench_detectors.py [--series 10000 --steps 100]``
"""

from __future__ import annotations

import argparse
import pickle
import time
from collections.abc import Callable

import numpy as np

from detectors.bocpd import Bocpd
from detectors.burnrate import BurnRate
from detectors.counts import PoissonCounts
from detectors.cusum import Cusum
from detectors.ensemble import Ensemble
from detectors.forest import ServiceForest
from detectors.pagehinkley import PageHinkley
from detectors.seasonal import Seasonal
from detectors.table import TableDetector
from detectors.threshold import Threshold

START = 1.7e9
BATCH: dict[str, Callable[[int], TableDetector]] = {
    "ensemble": lambda n: Ensemble(n),
    "cusum": lambda n: Cusum(n),
    "page-hinkley": lambda n: PageHinkley(n),
    "bocpd": lambda n: Bocpd(n),
    "seasonal": lambda n: Seasonal(n),
    "counts (Poisson)": lambda n: PoissonCounts(n),
    "threshold rule": lambda n: Threshold(n, limit=150.0, clear=140.0, min_duration=300.0),
    "burn-rate rule": lambda n: BurnRate(n, objective=0.999),
}


def make_stream(series: int, steps: int, seed: int = 0) -> np.ndarray:
    """``(steps, series)`` values: daily sine waves with noise and a few spikes."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, series)
    t = np.arange(steps)[:, None]
    values = 100 + 20 * np.sin(2 * np.pi * t / 1440 + phase) + rng.normal(0, 2, (steps, series))
    values[rng.random((steps, series)) < 1e-3] += 50
    return values


def bench_batch(make: Callable[[int], TableDetector], values: np.ndarray
                ) -> tuple[float, int]:
    """Samples per second and state bytes per series of one batch detector."""
    steps, series = values.shape
    detector = make(series)
    slots = np.arange(series)
    started = time.perf_counter()
    for step in range(steps):
        detector.step(slots, np.full(series, START + 60.0 * step), values[step])
    return steps * series / (time.perf_counter() - started), detector.state_bytes_per_series


def bench_service_forest(width: int, services: int = 3, steps: int = 1440
                         ) -> tuple[float, int]:
    """Samples per second of the per-service forest with its stage settings (window 2,048
    rows, refit every 256, fits done in line so they are counted), fed a day of
    one-minute rows in batches of 60, and its state per series (model and window)."""
    values = make_stream(width * services, steps, seed=1).reshape(steps, services, width)
    # warm_up=0: score from the first fit on, so scoring is measured too.
    forests = [ServiceForest(width, background=False, warm_up=0) for _ in range(services)]
    started = time.perf_counter()
    for s, forest in enumerate(forests):
        for first in range(0, steps, 60):
            forest.step_many(values[first : first + 60, s])
    rate = steps * services * width / (time.perf_counter() - started)
    state = len(pickle.dumps(forests[0]._model)) + forests[0].window * width * 8
    return rate, state // width


def bench_half_space_trees(values: np.ndarray, samples: int) -> tuple[float, int]:
    """Samples per second of river's HalfSpaceTrees (one model, one sample at a time)
    and the pickled size of that model, which serves one series."""
    from river.anomaly import HalfSpaceTrees

    model = HalfSpaceTrees(seed=42)
    flat = values.ravel()[:samples]
    low, high = float(flat.min()), float(flat.max())
    started = time.perf_counter()
    for value in flat.tolist():
        x = {"value": (value - low) / (high - low)}
        model.score_one(x)
        model.learn_one(x)
    return samples / (time.perf_counter() - started), len(pickle.dumps(model))


def bench_isolation_forest(values: np.ndarray) -> tuple[float, int]:
    """Samples per second of IsolationForest scoring each step's samples as a batch, and
    the pickled fitted model divided by the series it scores."""
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(n_estimators=100, random_state=42)
    forest.fit(values[:10].reshape(-1, 1))
    started = time.perf_counter()
    for step in range(10, values.shape[0]):
        forest.score_samples(values[step].reshape(-1, 1))
    rate = (values.shape[0] - 10) * values.shape[1] / (time.perf_counter() - started)
    return rate, len(pickle.dumps(forest)) // values.shape[1]


def main() -> None:
    """Run every detector and peer; print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--hst-samples", type=int, default=20_000)
    parser.add_argument("--service-width", type=int, default=10)
    args = parser.parse_args()

    values = make_stream(args.series, args.steps)
    rows = []
    for name, make in BATCH.items():
        stream = values / 1000.0 if name.startswith("burn") else values
        rows.append((f"tillwatch {name} (batch)", *bench_batch(make, stream)))
    rows.append((f"tillwatch service forest ({args.service_width} series)",
                 *bench_service_forest(args.service_width)))
    rows.append(("river HalfSpaceTrees (one by one)",
                 *bench_half_space_trees(values, args.hst_samples)))
    rows.append(("sklearn IsolationForest (batch)", *bench_isolation_forest(values)))

    print(f"{'detector':<42}{'samples/s':>14}{'state B/series':>16}")
    for name, rate, state in rows:
        print(f"{name:<42}{rate:>14,.0f}{state:>16,}")
    print("targets: >= 250,000 samples/s per core, <= 4,096 B per series")


if __name__ == "__main__":
    main()
