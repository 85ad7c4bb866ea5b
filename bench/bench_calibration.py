"""How often each detector family's score passes a bar on a normal week, beside the claim.

A family's score is decades of surprise over ten: a score ``s`` claims a tail probability
of ``10 ** (-10 s)`` under the family's own model of normal behaviour. This script runs the
detector stage over a simulated estate without incident scenarios (trading hours from its
stores, no rules: they judge known limits, not surprise) and counts, in the second week
(after the profiles have seen one of each weekday), the samples of each family whose score
reaches each bar. The ratio to the nominal rate says how far the calibration holds on
data like a retailer's. Reminders of an event that goes on are not counted: they repeat
a verdict already counted.

Usage: ``python bench/bench_calibration.py [--days 14 --seed 2]``
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict

import numpy as np
from tqdm import tqdm

from detectors.calendar import Calendar, TradingHours
from detectors.ensemble import EnsembleConfig
from detectors.stage import DetectorStage, family_of
from estate.simulator import Simulator
from tillwatch.anomaly import REMINDER

DAY = 86_400.0
BARS = (0.3, 0.4, 0.5, 0.7, 1.0)


def measure(days: float, seed: int) -> tuple[Counter[str], dict[str, list[float]]]:
    """Samples per family and scores of at least the lowest bar, in the last week."""
    simulator = Simulator(seed=seed)
    hours = [TradingHours({"store": s.name}, s.hours) for s in simulator.estate.stores]
    # Anomalies from the lowest bar are counted, but the ensemble holds from the default
    # threshold, as a deployment's would.
    stage = DetectorStage(threshold=min(BARS), config=EnsembleConfig(),
                          calendar=Calendar(hours=hours), rules=())
    samples: Counter[str] = Counter()
    scores: dict[str, list[float]] = defaultdict(list)
    judged_from = None
    for batch in tqdm(simulator.run(duration=days * DAY), desc="calibration", unit="batch"):
        judged_from = judged_from or float(batch.ts.min()) + (days - 7) * DAY
        families = np.array([family_of(batch.series[int(i)].signal)
                             for i in batch.series_ix])
        judged = batch.ts >= judged_from

        for family in np.unique(families).tolist():
            samples[family] += int(((families == family) & judged).sum())
        for anomaly in stage.process(batch):
            if anomaly.ts >= judged_from and REMINDER not in anomaly.extra:
                scores[anomaly.detector].append(anomaly.score)
    return samples, scores


def main() -> None:
    """Print samples per 10,000 reaching each bar, per family, beside the nominal rate."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=14.0, help="simulated days (>= 7)")
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()

    started = time.perf_counter()
    samples, scores = measure(args.days, args.seed)
    header = "".join(f"{f'>= {bar:g}':>10}" for bar in BARS)
    print(f"{'family':<12}{'samples':>10}{header}   (per 10,000 samples, last 7 days)")
    nominal = "".join(f"{1e4 * 10 ** (-10 * bar):>10.3g}" for bar in BARS)
    print(f"{'nominal':<12}{'':>10}{nominal}")
    for family in sorted(samples):
        passed = np.array(scores[family])
        rates = "".join(f"{1e4 * (passed >= bar).sum() / samples[family]:>10.2f}"
                        for bar in BARS)
        print(f"{family:<12}{samples[family]:>10,}{rates}")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
