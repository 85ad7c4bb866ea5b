"""A threshold rule with hysteresis and a minimum duration, for signals with known limits.

Some signals need no learning: a backup older than the recovery point objective, a
replica more than five minutes behind, a certificate expiring within two weeks are
problems whatever the series did before. The rule fires once the value has stayed
beyond ``limit`` for ``min_duration`` seconds (every sample in between beyond it) and
clears only when the value comes back past ``clear``, the hysteresis edge, so a value
hovering at the limit does not flap.

Scores are verdicts, not likelihoods: 1 while the rule fires, 0 otherwise. There is no
warm-up: the limit is known from the first sample.
"""

from __future__ import annotations

import numpy as np

from detectors.base import DetectorError
from detectors.table import TableDetector

SINCE, BEYOND, FIRING = range(2, 5)


class Threshold(TableDetector):
    """Fire after ``min_duration`` seconds beyond ``limit``; clear past ``clear``.

    Args:
        n_slots: series slots to allocate.
        limit: the value a series must not pass.
        clear: the value a firing series must come back past to clear (``limit`` when
            omitted); at or below ``limit`` for an upper limit, at or above for a lower.
        min_duration: seconds the value must stay beyond the limit before firing;
            0 fires on the first sample beyond it.
        above: True when values above ``limit`` are bad, False when values below are.

    Raises:
        DetectorError: when ``clear`` lies on the wrong side of ``limit`` or
            ``min_duration`` is negative.
    """

    columns = ("seen", "last_ts", "since", "beyond", "firing")

    def __init__(self, n_slots: int = 1, *, limit: float, clear: float | None = None,
                 min_duration: float = 0.0, above: bool = True) -> None:
        clear = limit if clear is None else clear
        self.limit, self.clear, self.min_duration = limit, clear, min_duration
        self.above = above
        # Work in signed units, where "beyond" always means "greater than".
        self._sign = 1.0 if above else -1.0
        if self._sign * clear > self._sign * limit or min_duration < 0:
            side = "at or below" if above else "at or above"
            raise DetectorError(
                f"threshold rule: clear {clear:g} must lie {side} limit {limit:g} and "
                f"min_duration ({min_duration:g} s) must be >= 0; fix the rule"
            )
        super().__init__(n_slots, warm_up=0)

    def _advance(self, rows: np.ndarray, ts: np.ndarray, value: np.ndarray) -> np.ndarray:
        signed = self._sign * value
        beyond = signed > self._sign * self.limit

        # A run beyond the limit starts at its first sample and ends at the first one back.
        starting = beyond & (rows[:, BEYOND] == 0)
        rows[starting, SINCE] = ts[starting]
        rows[:, BEYOND] = beyond
        long_enough = beyond & (ts - rows[:, SINCE] >= self.min_duration)

        cleared = signed < self._sign * self.clear
        firing = np.where(rows[:, FIRING] > 0, ~cleared, long_enough)
        rows[:, FIRING] = firing
        return firing.astype(float)
