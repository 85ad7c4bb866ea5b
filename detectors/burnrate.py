"""Multi-window SLO burn-rate alerting over a ratio signal (error ratio, slow-request share).

An objective of 99.9 % leaves an error budget of 0.1 % of requests; the *burn rate* of a
window is its bad-request ratio over that budget (1 spends the budget exactly over the
SLO period). Two alerts, as the SRE workbook recommends:

- fast: burn >= 14.4 over the last hour AND over the last 5 minutes (2 % of a 30-day
  budget in an hour);
- slow: burn >= 6 over the last 6 hours AND over the last 30 minutes (5 % in 6 hours).

The short window makes the alert stop soon after the problem does.

State: a ring of per-minute means of the ratio, 360 minutes (6 h), the current minute's
running sum and count, and a sum and count per window: 374 float64 columns with the
workbook's four windows, 2.99 KB per series. Why a ring and
not exponentially decayed sums (4 columns): the alert conditions are defined on sliding
windows, and a decayed sum has a different step response (it reaches 63 % of a step
after its time constant and never forgets entirely), so a 5-minute "short window" built
from one would keep an alert firing well after recovery and fire later on a sudden
outage. The ring gives the workbook's windows exactly, to the minute. Minutes without a
sample (marked -1 in the ring) are left out of the averages rather than counted as good.

Each sample is weighted alike within its minute (the collectors publish a ratio, not
request counts), and the ratio of the current, unfinished minute takes part. Values are
clipped to [0, 1]: a ratio outside it is a collector's bug, not a burn.
"""

from __future__ import annotations

import numpy as np

from detectors.base import NEUTRAL_SCORE, DetectorError, check_step
from detectors.table import LAST_TS, SEEN, TableDetector

RING = 360  # minutes: the longest window, 6 hours
MINUTE, MINUTE_SUM, MINUTE_COUNT, FIRING = range(2, 6)
EMPTY = -1.0  # a ring minute without samples; ratios are never negative
# (long window, short window, burn factor), minutes.
WORKBOOK_ALERTS = ((60, 5, 14.4), (360, 30, 6.0))


class BurnRate(TableDetector):
    """Multi-window burn-rate alerts over per-series ratios (see the module docstring).

    Besides the ring, each window keeps the sum and count of its finished minutes, moved
    on by one minute in and one out at each new minute, so a sample costs a few
    operations per window rather than a pass over the ring. The sums are rebuilt from the
    ring after a gap of more than a minute and once every 6 hours (no drift).

    Args:
        n_slots: series slots to allocate.
        objective: the SLO as a fraction of good requests, e.g. 0.999.
        alerts: ``(long minutes, short minutes, burn factor)`` per alert; any one firing
            makes the score 1. Windows may not exceed 360 minutes.

    Raises:
        DetectorError: when the objective is not in (0, 1) or a window is out of range.
    """

    def __init__(self, n_slots: int = 1, *, objective: float = 0.999,
                 alerts: tuple[tuple[int, int, float], ...] = WORKBOOK_ALERTS) -> None:
        if not 0.0 < objective < 1.0 or any(
                not 0 < w <= RING for long, short, _ in alerts for w in (long, short)):
            raise DetectorError(
                f"burn-rate rule: objective must lie in (0, 1) (got {objective:g}) and "
                f"windows in 1..{RING} minutes (got {alerts}); fix the rule"
            )
        self.objective, self.alerts = objective, alerts
        self.budget = 1.0 - objective
        self.windows = sorted({w for long, short, _ in alerts for w in (long, short)})
        self._sum_col = {w: 6 + 2 * i for i, w in enumerate(self.windows)}
        self._ring = 6 + 2 * len(self.windows)
        self.columns = ("seen", "last_ts", "minute", "minute_sum", "minute_count", "firing",
                        *(f"{kind}{w}" for w in self.windows for kind in ("sum", "count")),
                        *(f"m{i}" for i in range(RING)))
        super().__init__(n_slots, warm_up=0)

    def _initial_rows(self, rows: np.ndarray) -> None:
        rows[:, MINUTE] = -1.0
        rows[:, self._ring:] = EMPTY

    def burn(self, slots: np.ndarray, minutes: int) -> np.ndarray:
        """Burn rate of each series over its last ``minutes`` minutes (NaN: no data)."""
        rows = self.state[np.asarray(slots, dtype=np.int64)]
        ring = rows[:, self._ring:]
        used = (self._age(rows) < minutes) & (ring >= 0.0)
        total, count = np.where(used, ring, 0.0).sum(axis=1), used.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / count / self.budget, np.nan)

    def step(self, slots: np.ndarray, ts: np.ndarray, value: np.ndarray) -> np.ndarray:
        """Score then learn one sample per series slot (see ``TableDetector.step``).

        Works on the table in place, touching a few columns per sample: copying whole
        rows of 3 KB, as the shared step does, would cost more than the rule itself.

        Raises:
            DetectorError: when the arrays do not line up (see ``check_step``).
        """
        slots = np.asarray(slots, dtype=np.int64)
        check_step(slots, ts, value, len(self.state))
        scores = np.full(len(slots), NEUTRAL_SCORE)
        valid = np.isfinite(value) & (ts > self.state[slots, LAST_TS])
        if not valid.any():
            return scores
        live, ts, value = slots[valid], ts[valid], value[valid]
        minute = np.floor(ts / 60.0)
        self._roll(live, minute)

        self.state[live, MINUTE_SUM] += np.clip(value, 0.0, 1.0)
        self.state[live, MINUTE_COUNT] += 1
        mean = self.state[live, MINUTE_SUM] / self.state[live, MINUTE_COUNT]
        self.state[live, self._ring + (minute % RING).astype(np.int64)] = mean
        firing = np.zeros(len(live), dtype=bool)
        for long, short, factor in self.alerts:
            firing |= self._over(live, long, factor) & self._over(live, short, factor)

        self.state[live, FIRING] = firing
        self.state[live, SEEN] += 1
        self.state[live, LAST_TS] = ts
        scores[valid] = firing
        return scores

    def _roll(self, slots: np.ndarray, minute: np.ndarray) -> None:
        """Start a new minute: the last one joins every window, old ones leave."""
        last = self.state[slots, MINUTE]
        step = (minute == last + 1) & (last >= 0)
        jump = (minute > last) & ~step
        if step.any():
            self._step_minute(slots[step], minute[step])
        if jump.any():
            self.state[slots[jump]] = self._jump(self.state[slots[jump]], minute[jump])

    def _step_minute(self, slots: np.ndarray, minute: np.ndarray) -> None:
        """Move every window on by one minute (the common case), in place."""
        state, ring = self.state, self._ring
        finished = state[slots, ring + ((minute - 1) % RING).astype(np.int64)]
        for w, col in self._sum_col.items():
            leaving = state[slots, ring + ((minute - w) % RING).astype(np.int64)]
            gone = leaving >= 0
            state[slots, col] += finished - np.where(gone, leaving, 0.0)
            state[slots, col + 1] += 1.0 - gone
        state[slots, ring + (minute % RING).astype(np.int64)] = EMPTY
        self._start(state, slots, minute)

        # Once every 6 hours, rebuild the sums so rounding cannot accumulate.
        due = slots[minute % RING == 0]
        if len(due):
            self.state[due] = self._rebuild(self.state[due])

    def _jump(self, rows: np.ndarray, minute: np.ndarray) -> np.ndarray:
        """After a gap (or on the first sample): forget stale minutes, rebuild the sums."""
        last = np.maximum(rows[:, MINUTE], minute - RING)
        gap = minute - last
        age = (np.arange(RING)[None, :] - ((last + 1) % RING)[:, None]) % RING
        rows[:, self._ring:][age < gap[:, None]] = EMPTY
        self._start(rows, np.arange(len(rows)), minute)
        return self._rebuild(rows)

    @staticmethod
    def _start(table: np.ndarray, slots: np.ndarray, minute: np.ndarray) -> None:
        table[slots, MINUTE] = minute
        table[slots, MINUTE_SUM] = 0.0
        table[slots, MINUTE_COUNT] = 0.0

    def _rebuild(self, rows: np.ndarray) -> np.ndarray:
        """Recompute the finished-minute sums of ``rows`` from the ring."""
        ring, age = rows[:, self._ring:], self._age(rows)
        for w, col in self._sum_col.items():
            used = (age >= 1) & (age < w) & (ring >= 0.0)
            rows[:, col] = np.where(used, ring, 0.0).sum(axis=1)
            rows[:, col + 1] = used.sum(axis=1)
        return rows

    @staticmethod
    def _age(rows: np.ndarray) -> np.ndarray:
        """Minutes between each ring slot's minute and the current one."""
        return (rows[:, MINUTE, None] - np.arange(RING)[None, :]) % RING

    def _window(self, slots: np.ndarray, minutes: int) -> tuple[np.ndarray, np.ndarray]:
        """Sum and count of the minute means of the last ``minutes`` minutes."""
        col, state = self._sum_col[minutes], self.state
        count = state[slots, MINUTE_COUNT]
        mean = np.where(count > 0, state[slots, MINUTE_SUM] / np.maximum(count, 1), 0.0)
        return state[slots, col] + mean, state[slots, col + 1] + (count > 0)

    def _over(self, slots: np.ndarray, minutes: int, factor: float) -> np.ndarray:
        total, count = self._window(slots, minutes)
        return (count > 0) & (total >= factor * self.budget * count)
