"""CUSUM, Page-Hinkley and BOCPD side by side: the same seeded streams, one table.

Streams (seeded, ``--series`` series each, ``--length`` one-minute samples, level and
scale drawn per series): level shifts up and down of 1, 2, 3 and 5 deviations and
variance changes (x3, x0.3) at ``--change``; and streams with no change (Normal noise;
Student-t noise with 3 degrees of freedom, heavy-tailed) for false alarms.

Per detector: detection rate (a score >= ``--bar`` within ``--horizon`` samples of the
change), median delay (samples from the change to that first score, 0 = the changed
sample itself), false alarms per 10,000 samples on each no-change stream (scores >= the
bar after warm-up), throughput (10,000 series x ``--steps`` steps; run under
``taskset -c 0`` for one core) and state bytes per series. Then each detector alone on
NAB (``--nab``): normalised score per profile at its best threshold, the same at the best
threshold that alarms at all, and confirmed changes per 10,000 rows.

Usage: ``taskset -c 0 .venv/bin/python bench/bench_changepoint.py``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from detectors.bocpd import Bocpd
from detectors.cusum import Cusum
from detectors.nab import detect, load_corpus
from detectors.nab_score import PROFILES, FileRows, score_corpus, sweep
from detectors.pagehinkley import PageHinkley
from detectors.table import TableDetector

START = 1.7e9
DETECTORS: dict[str, Callable[[int], TableDetector]] = {
    "CUSUM": lambda n: Cusum(n),
    "Page-Hinkley": lambda n: PageHinkley(n),
    "BOCPD": lambda n: Bocpd(n),
}
SHIFTS = (1.0, 2.0, 3.0, 5.0, -1.0, -2.0, -3.0, -5.0)
VARIANCES = (3.0, 0.3)


def base_stream(rng: np.random.Generator, series: int, length: int, heavy: bool = False
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(length, series)`` noise around a per-series level, its levels and scales."""
    level = rng.uniform(50, 500, series)
    scale = level * rng.uniform(0.01, 0.1, series)
    noise = rng.standard_t(3, (length, series)) if heavy else rng.normal(size=(length, series))
    return level + scale * noise, level, scale


def change_streams(seed: int, series: int, length: int, change: int
                   ) -> dict[str, np.ndarray]:
    """Every change scenario by name, each ``(length, series)``."""
    rng = np.random.default_rng(seed)
    streams = {}
    for size in SHIFTS:
        values, _, scale = base_stream(rng, series, length)
        values[change:] += size * scale
        streams[f"shift {size:+g} sd"] = values
    for factor in VARIANCES:
        values, level, _ = base_stream(rng, series, length)
        values[change:] = level + (values[change:] - level) * np.sqrt(factor)
        streams[f"variance x{factor:g}"] = values
    return streams


def run(make: Callable[[int], TableDetector], values: np.ndarray) -> np.ndarray:
    """Scores ``(length, series)`` of a fresh detector over ``values``."""
    length, series = values.shape
    detector, slots = make(series), np.arange(series)
    return np.array([detector.step(slots, np.full(series, START + 60.0 * t), values[t])
                     for t in range(length)])


def delays(scores: np.ndarray, change: int, horizon: int, bar: float) -> np.ndarray:
    """Samples from the change to each series' first score >= bar (NaN: not found)."""
    hit = scores[change : change + horizon] >= bar
    return np.where(hit.any(axis=0), hit.argmax(axis=0), np.nan)


def false_alarms(scores: np.ndarray, warm_up: int, bar: float) -> float:
    """Scores >= bar per 10,000 samples after warm-up."""
    judged = scores[warm_up:]
    return float((judged >= bar).sum() / judged.size * 10_000)


def throughput(make: Callable[[int], TableDetector], series: int, steps: int
               ) -> tuple[float, int]:
    """Samples per second over ``series`` series and the state bytes per series."""
    values, _, _ = base_stream(np.random.default_rng(99), series, steps)
    detector, slots = make(series), np.arange(series)
    started = time.perf_counter()
    for t in range(steps):
        detector.step(slots, np.full(series, START + 60.0 * t), values[t])
    return steps * series / (time.perf_counter() - started), detector.state_bytes_per_series


def nab_scores(make: Callable[[int], TableDetector], data: Path) -> dict[str, str]:
    """NAB figures of the detector alone, formatted, by row name.

    Per profile: the normalised score at the best threshold (0 when detecting nothing
    beats every threshold) and at the best threshold that raises at least one alarm
    (negative: worse than silence), so detectors below the null still compare. Also the
    rows scored 1 (confirmed changes) per 10,000 rows.
    """
    files = load_corpus(data)
    scores = detect(files, make, progress=False)
    rows = [FileRows(f.name, s, f.windows) for f, s in zip(files, scores, strict=True)]
    figures = {}
    for profile in PROFILES:
        _, raw, counts = sweep(rows, profile)
        perfect, null = profile.tp * counts[0, 2], raw[0]
        forced = 100.0 * (raw[1:].max() - null) / (perfect - null)
        figures[f"NAB {profile.name}"] = f"{score_corpus(rows, profile).normalised:.1f}"
        figures[f"NAB {profile.name}, >=1 alarm"] = f"{forced:.1f}"
    confirmed = sum(int((s >= 1.0).sum()) for s in scores) / sum(map(len, scores))
    figures["NAB rows scored 1 /10k"] = f"{confirmed * 10_000:.0f}"
    return figures


def measure(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    """Every figure of every detector, formatted, by row name then detector."""
    streams = change_streams(args.seed, args.series, args.length, args.change)
    rng = np.random.default_rng(args.seed + 1)
    quiet = {"Normal noise": base_stream(rng, args.series, args.length)[0],
             "Student-t(3) noise": base_stream(rng, args.series, args.length, heavy=True)[0]}
    table: dict[str, dict[str, str]] = {}
    for name, make in DETECTORS.items():
        for scenario, values in streams.items():
            found = delays(run(make, values), args.change, args.horizon, args.bar)
            rate = np.isfinite(found).mean()
            median = f"{np.nanmedian(found):.0f}" if rate else "-"
            table.setdefault(f"{scenario}: rate, delay", {})[name] = f"{rate:.2f}, {median}"
        warm_up = make(1).warm_up
        for scenario, values in quiet.items():
            alarms = false_alarms(run(make, values), warm_up, args.bar)
            table.setdefault(f"{scenario}: alarms/10k", {})[name] = f"{alarms:.1f}"
        rate_s, state = throughput(make, args.throughput_series, args.steps)
        table.setdefault("samples/s", {})[name] = f"{rate_s:,.0f}"
        table.setdefault("state B/series", {})[name] = f"{state:,}"
        if args.nab:
            for row, figure in nab_scores(make, args.nab).items():
                table.setdefault(row, {})[name] = figure
    return table


def main() -> None:
    """Measure the three detectors and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=200)
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--change", type=int, default=500)
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--bar", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--throughput-series", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--nab", type=Path, default=Path("/work/shared/data/nab"))
    parser.add_argument("--no-nab", dest="nab", action="store_const", const=None)
    args = parser.parse_args()

    table = measure(args)
    names = list(DETECTORS)
    print(f"{'figure':<34}" + "".join(f"{name:>16}" for name in names))
    for row, cells in table.items():
        print(f"{row:<34}" + "".join(f"{cells[name]:>16}" for name in names))
    print(f"bar {args.bar}; delay = median samples from the change to the first score >= "
          f"bar within {args.horizon}; {args.series} series per stream")


if __name__ == "__main__":
    main()
