"""Throughput of the ensemble's batch path beside river and scikit-learn, on one stream.

The stream: ``--series`` series of noisy daily sine waves, one sample per series per
step. The ensemble advances all series per step; river's HalfSpaceTrees learns and scores
one sample at a time (a sub-stream, it is slow); scikit-learn's IsolationForest is fitted
once on the first steps and then scores each step's samples as a batch.

Usage: ``python bench/bench_detectors.py [--series 10000 --steps 100]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from detectors.ensemble import Ensemble


def make_stream(series: int, steps: int, seed: int = 0) -> np.ndarray:
    """``(steps, series)`` values: daily sine waves with noise and a few spikes."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, series)
    t = np.arange(steps)[:, None]
    values = 100 + 20 * np.sin(2 * np.pi * t / 1440 + phase) + rng.normal(0, 2, (steps, series))
    values[rng.random((steps, series)) < 1e-3] += 50
    return values


def bench_ensemble(values: np.ndarray) -> tuple[float, int]:
    """Samples per second and state bytes per series of the ensemble's batch path."""
    steps, series = values.shape
    ensemble = Ensemble(series)
    slots = np.arange(series)
    started = time.perf_counter()
    for step in range(steps):
        ensemble.step(slots, np.full(series, 1.7e9 + 60.0 * step), values[step])
    return steps * series / (time.perf_counter() - started), ensemble.state_bytes_per_series


def bench_half_space_trees(values: np.ndarray, samples: int) -> float:
    """Samples per second of river's HalfSpaceTrees, one model, one sample at a time."""
    from river.anomaly import HalfSpaceTrees

    model = HalfSpaceTrees(seed=42)
    flat = values.ravel()[:samples]
    low, high = float(flat.min()), float(flat.max())
    started = time.perf_counter()
    for value in flat.tolist():
        x = {"value": (value - low) / (high - low)}
        model.score_one(x)
        model.learn_one(x)
    return samples / (time.perf_counter() - started)


def bench_isolation_forest(values: np.ndarray) -> float:
    """Samples per second of IsolationForest scoring each step's samples as a batch."""
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(n_estimators=100, random_state=42)
    forest.fit(values[:10].reshape(-1, 1))
    started = time.perf_counter()
    for step in range(10, values.shape[0]):
        forest.score_samples(values[step].reshape(-1, 1))
    return (values.shape[0] - 10) * values.shape[1] / (time.perf_counter() - started)


def main() -> None:
    """Run the three and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--hst-samples", type=int, default=20_000)
    args = parser.parse_args()

    values = make_stream(args.series, args.steps)
    rate, state = bench_ensemble(values)
    print(f"{'detector':<34}{'samples/s':>14}{'state B/series':>16}")
    print(f"{'tillwatch ensemble (batch)':<34}{rate:>14,.0f}{state:>16}")
    print(f"{'river HalfSpaceTrees (one by one)':<34}"
          f"{bench_half_space_trees(values, args.hst_samples):>14,.0f}{'n/a':>16}")
    print(f"{'sklearn IsolationForest (batch)':<34}"
          f"{bench_isolation_forest(values):>14,.0f}{'n/a':>16}")


if __name__ == "__main__":
    main()
