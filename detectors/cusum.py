"""Two-sided CUSUM for level shifts, normalised by a robust running scale.

Each side accumulates standardised drift beyond ``slack`` and resets at zero; the score
is the larger sum over ``limit``, capped at 1, so a sustained shift of a few deviations
reaches 1 within a handful of samples while noise stays near 0. After the score reaches
1 both sums restart and the baseline jumps to the new level: the shift is reported once.
"""

from __future__ import annotations

import numpy as np

from detectors.table import TableDetector

LEVEL, DEV, UP, DOWN = range(2, 6)


class Cusum(TableDetector):
    """Level-shift detector over many series.

    Args:
        n_slots: series slots to allocate.
        rate: smoothing of the baseline level and deviation per sample.
        slack: standardised drift tolerated before the sums grow.
        limit: sum at which the score reaches 1.
        warm_up: samples before a series scores.
    """

    columns = ("seen", "last_ts", "level", "dev", "up", "down")

    def __init__(self, n_slots: int = 1, *, rate: float = 0.02, slack: float = 0.5,
                 limit: float = 8.0, warm_up: int = 30) -> None:
        self.rate, self.slack, self.limit = rate, slack, limit
        super().__init__(n_slots, warm_up=warm_up)

    def _advance(self, rows: np.ndarray, ts: np.ndarray, value: np.ndarray) -> np.ndarray:
        first = rows[:, 0] == 0
        rows[first, LEVEL] = value[first]
        z = (value - rows[:, LEVEL]) / (rows[:, DEV] + 1e-9 * np.abs(rows[:, LEVEL]) + 1e-12)
        z = np.clip(z, -50.0, 50.0)
        rows[:, UP] = np.maximum(rows[:, UP] + z - self.slack, 0.0)
        rows[:, DOWN] = np.maximum(rows[:, DOWN] - z - self.slack, 0.0)
        score = np.minimum(np.maximum(rows[:, UP], rows[:, DOWN]) / self.limit, 1.0)

        # A confirmed shift becomes the new baseline.
        shifted = (score >= 1.0) & (rows[:, 0] >= self.warm_up)
        young = rows[:, 0] < self.warm_up
        rows[young, UP] = rows[young, DOWN] = 0.0
        rows[shifted, LEVEL] = value[shifted]
        rows[shifted, UP] = rows[shifted, DOWN] = 0.0
        self._learn(rows, value, ~shifted)
        return score

    def _learn(self, rows: np.ndarray, value: np.ndarray, calm: np.ndarray) -> None:
        rate = np.maximum(self.rate, 1.0 / (rows[:, 0] + 1.0))
        delta = np.where(calm, value - rows[:, LEVEL], 0.0)
        bound = 4.0 * rows[:, DEV] + 1e-12
        clipped = np.where(rows[:, 0] < self.warm_up, delta, np.clip(delta, -bound, bound))
        rows[:, LEVEL] += rate * clipped
        rows[:, DEV] += rate * calm * (np.abs(clipped) - rows[:, DEV])
