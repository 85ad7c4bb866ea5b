"""Two-sided Page-Hinkley test for level shifts, on robust-standardised values.

Page-Hinkley accumulates each sample's deviation from the running mean *of the current
regime* (every sample since the last confirmed change), less a tolerance ``delta``, and
compares the sum with its running minimum. ``m_t - min(m)`` obeys the recursion
``max(0, previous + deviation - delta)``, so each side keeps one bounded number instead
of an ever-falling sum and its minimum. Deviations are divided by a robust running scale
(mean absolute deviation, its updates clipped), so ``delta`` and ``limit`` are in
deviations whatever the series' unit.

What sets it apart from :mod:`detectors.cusum`: the reference is the regime's own mean,
restarted at each confirmed change and averaged over the whole regime (down to a floor
rate, so very long regimes still follow slow drift), not an exponentially smoothed level.
The score is the larger side over ``limit``, capped at 1; at 1 both sides restart and the
regime's mean starts again from the new level: the change is reported once.
"""

from __future__ import annotations

import numpy as np

from detectors.table import SEEN, TableDetector

MEAN, DEV, RUN, UP, DOWN = range(2, 7)


class PageHinkley(TableDetector):
    """Level-shift detector over many series.

    Args:
        n_slots: series slots to allocate.
        delta: standardised deviation tolerated before a side grows.
        limit: side sum at which the score reaches 1.
        forget: floor of the regime mean's update rate (the mean is the plain average
            of the regime until it holds ``1 / forget`` samples, then moves at this rate).
        rate: update rate of the robust scale once warm.
        warm_up: samples before a series scores.
    """

    columns = ("seen", "last_ts", "mean", "dev", "run", "up", "down")

    def __init__(self, n_slots: int = 1, *, delta: float = 0.5, limit: float = 12.0,
                 forget: float = 0.01, rate: float = 0.02, warm_up: int = 30) -> None:
        self.delta, self.limit, self.forget, self.rate = delta, limit, forget, rate
        super().__init__(n_slots, warm_up=warm_up)

    def _advance(self, rows: np.ndarray, ts: np.ndarray, value: np.ndarray) -> np.ndarray:
        first = rows[:, SEEN] == 0
        rows[first, MEAN] = value[first]
        scale = rows[:, DEV] + 1e-9 * np.abs(rows[:, MEAN]) + 1e-12
        z = np.clip((value - rows[:, MEAN]) / scale, -50.0, 50.0)
        rows[:, UP] = np.maximum(rows[:, UP] + z - self.delta, 0.0)
        rows[:, DOWN] = np.maximum(rows[:, DOWN] - z - self.delta, 0.0)
        score = np.minimum(np.maximum(rows[:, UP], rows[:, DOWN]) / self.limit, 1.0)

        # Warm-up samples teach the mean and scale but accumulate no evidence.
        young = rows[:, SEEN] < self.warm_up
        rows[young, UP] = rows[young, DOWN] = 0.0

        # A confirmed change starts a new regime at the new level.
        changed = (score >= 1.0) & ~young
        rows[changed, MEAN] = value[changed]
        rows[changed, RUN] = 0.0
        rows[changed, UP] = rows[changed, DOWN] = 0.0
        self._learn(rows, value, ~changed)
        return score

    def _learn(self, rows: np.ndarray, value: np.ndarray, calm: np.ndarray) -> None:
        delta = np.where(calm, value - rows[:, MEAN], 0.0)
        rows[:, RUN] += 1.0
        rows[:, MEAN] += np.maximum(self.forget, 1.0 / rows[:, RUN]) * delta

        # The scale is robust: once warm, one wild sample moves it by at most 4 scales.
        bound = 4.0 * rows[:, DEV] + 1e-12
        warm = rows[:, SEEN] >= self.warm_up
        clipped = np.where(warm, np.clip(delta, -bound, bound), delta)
        rate = np.maximum(self.rate, 1.0 / (rows[:, SEEN] + 1.0))
        rows[:, DEV] += rate * calm * (np.abs(clipped) - rows[:, DEV])
