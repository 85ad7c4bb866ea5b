"""A robust seasonal baseline: what a series usually does at this hour of this kind of day.

Each series keeps, for every hour of every *day type* (by default weekdays, Saturday and
Sunday: 72 slots), a robust level and a robust deviation learned online by clipped
exponential averaging. A sample is judged against its own slot; while that slot has not
seen enough samples (the first Saturday of a new series, say) it borrows the same hour
of the first day type, judged with wider bands since the borrowed profile is a guess.

Two views, each a two-sided normal tail: the sample alone, and a short average of signed
surprises so that a sustained shift of a couple of deviations counts. The smaller
probability, Bonferroni-corrected, becomes decades of surprise over ``decades``, capped
at 1. Samples scoring at least ``fire`` teach the profile at a tenth of the usual rate:
an anomaly the detector has flagged barely moves its own baseline, while a lasting
change is still learned in the end.

Trading hours and calendar events (holidays, promotions) are masks applied by the caller
(see :mod:`detectors.calendar`): a masked sample is passed as missing, so it scores
neutral and teaches nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import log_ndtr

from detectors.table import TableDetector

DAY = 86_400.0
HOURS = 24
LN10 = np.log(10.0)
# Monday = 0 .. Sunday = 6 -> day type; weekdays share a profile.
WEEKDAYS_SATURDAY_SUNDAY = (0, 0, 0, 0, 0, 1, 2)
# 1970-01-01, the epoch, was a Thursday.
_EPOCH_WEEKDAY = 3
# Mean absolute deviation of a normal variable is 0.798 of its standard deviation.
_MAD_TO_SIGMA = 1.2533


def hour_slots(ts: np.ndarray, day_types: Sequence[int], utc_offset_hours: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Profile slot of each time, and the slot to borrow when it is not learned yet.

    Args:
        ts: sample times, seconds since the epoch (UTC).
        day_types: day type of Monday..Sunday.
        utc_offset_hours: offset of local time, where trading happens, from UTC.

    Returns:
        ``(own, borrowed)``: slot ``type * 24 + hour`` and the same hour of the first
        day type.
    """
    local = ts + 3600.0 * utc_offset_hours
    hour = np.floor(np.mod(local, DAY) / 3600.0).astype(np.int64)
    weekday = (np.floor(local / DAY).astype(np.int64) + _EPOCH_WEEKDAY) % 7
    kind = np.asarray(day_types, dtype=np.int64)[weekday]
    return kind * HOURS + hour, int(day_types[0]) * HOURS + hour


class HourProfile:
    """Per-series hourly profile held in a block of table columns, read and learned with
    linear interpolation between the centres of neighbouring hours, so that a ramp
    through the day is followed rather than seen as steps.

    Args:
        first: first column of the block; the block holds ``parts`` values per slot and
            one visit count per slot.
        parts: names of the values kept per slot (``level``, ``dev``).
        day_types: day type of Monday..Sunday.
        utc_offset_hours: local time offset.
        min_visits: samples a slot needs before it judges on its own.
        widen_alone: judge with a lone known neighbour as with a borrowed slot.
    """

    def __init__(self, first: int, parts: Sequence[str], day_types: Sequence[int],
                 utc_offset_hours: float, min_visits: int, *, widen_alone: bool = True
                 ) -> None:
        self.widen_alone = widen_alone
        self.first, self.parts = first, tuple(parts)
        self.day_types, self.utc_offset_hours = tuple(day_types), utc_offset_hours
        self.min_visits = min_visits
        self.n_slots = HOURS * (max(self.day_types) + 1)

    def column_names(self) -> tuple[str, ...]:
        """Names of the block's columns, in order."""
        return tuple(f"{part}_{slot}" for part in (*self.parts, "visits")
                     for slot in range(self.n_slots))

    def col(self, part: str, slot: np.ndarray) -> np.ndarray:
        """Column of a part (or ``visits``) at each slot."""
        index = (*self.parts, "visits").index(part)
        return self.first + index * self.n_slots + slot

    def neighbours(self, ts: np.ndarray) -> tuple[np.ndarray, ...]:
        """The two hour slots around each time and the weight of the later one."""
        position = ts / 3600.0 - 0.5
        later = position - np.floor(position)
        before = ts - later * 3600.0
        own_a, borrowed_a = hour_slots(before, self.day_types, self.utc_offset_hours)
        own_b, borrowed_b = hour_slots(before + 3600.0, self.day_types, self.utc_offset_hours)
        return own_a, borrowed_a, own_b, borrowed_b, later

    def read(self, rows: np.ndarray, ts: np.ndarray, part: str, min_visits: float | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Interpolated ``part`` at each time, whether it is known, whether borrowed.

        A slot is known from ``min_visits`` samples (the profile's own by default); the
        value is known where either neighbour is; with ``widen_alone`` a lone
        neighbour counts as borrowed (judged wider).
        """
        enough = self.min_visits if min_visits is None else min_visits
        own_a, borrowed_a, own_b, borrowed_b, later = self.neighbours(ts)
        at = np.arange(len(rows))
        values, known, borrowed = [], [], []
        for own, spare in ((own_a, borrowed_a), (own_b, borrowed_b)):
            own_known = rows[at, self.col("visits", own)] >= enough
            spare_known = rows[at, self.col("visits", spare)] >= enough
            slot = np.where(own_known, own, spare)
            values.append(rows[at, self.col(part, slot)])
            known.append(own_known | spare_known)
            borrowed.append(~own_known & spare_known)
        # With one neighbour unknown the other stands alone, a guess on a ramp.
        weight_b = np.where(known[0], np.where(known[1], later, 0.0), 1.0)
        value = (1.0 - weight_b) * values[0] + weight_b * values[1]
        guessed = (borrowed[0] & known[0]) | (borrowed[1] & known[1])
        if self.widen_alone:
            guessed |= known[0] ^ known[1]
        return value, known[0] | known[1], guessed

    def learn(self, rows: np.ndarray, ts: np.ndarray, targets: dict[str, np.ndarray],
              around: dict[str, np.ndarray], rate: float, weight: np.ndarray) -> None:
        """Move each part of both neighbouring own slots by the error of the interpolation.

        Args:
            rows: the state rows.
            ts: sample times.
            targets: per part, what the sample says the value should have been.
            around: per part, the interpolated value the sample was judged against.
            rate: per-sample rate of a learned slot.
            weight: factor on the rate per sample (small for flagged samples).

        Each slot moves by its share of the interpolation; a young slot averages what it
        saw (rate ``1 / visits``) against its own value, not the interpolation.
        """
        own_a, _, own_b, _, later = self.neighbours(ts)
        at = np.arange(len(rows))
        for own, share in ((own_a, 1.0 - later), (own_b, later)):
            visits = rows[at, self.col("visits", own)]
            young = visits < self.min_visits
            # A flagged sample teaches little, except to a slot still learning its level.
            step = np.where(young, 1.0, weight) * share * np.maximum(rate, 1.0 / (visits + 1.0))
            for part, target in targets.items():
                current = rows[at, self.col(part, own)]
                reference = np.where(young | ~np.isfinite(around[part]), current, around[part])
                rows[at, self.col(part, own)] = current + step * (target - reference)
            rows[at, self.col("visits", own)] = visits + share


class Seasonal(TableDetector):
    """Robust hour-of-day-type profile per series; see the module docstring.

    Args:
        n_slots: series slots to allocate.
        day_types: day type of Monday..Sunday (types numbered from 0).
        utc_offset_hours: local time offset, so hours are the shop's hours.
        rate: per-sample smoothing of a slot's level and deviation once learned; a
            slot sees an hour of samples per visit, so 0.002 remembers about eight
            visits of one-minute samples.
        clip: deviations beyond this many robust units move the level no further.
        min_visits: samples a slot needs before it judges on its own.
        borrow_width: factor on the deviation when judging with a borrowed slot.
        short: smoothing of the short average of signed surprises.
        decades: decades of surprise that map to score 1.
        fire: score from which a sample teaches the profile at a tenth of the rate.
    """

    def __init__(self, n_slots: int = 1, *, day_types: Sequence[int] = WEEKDAYS_SATURDAY_SUNDAY,
                 utc_offset_hours: float = 0.0, rate: float = 0.002, clip: float = 3.0,
                 min_visits: int = 30, borrow_width: float = 2.0, short: float = 0.2,
                 decades: float = 10.0, fire: float = 0.5) -> None:
        self.day_types = tuple(int(t) for t in day_types)
        self.utc_offset_hours = utc_offset_hours
        self.rate, self.clip, self.min_visits = rate, clip, min_visits
        self.borrow_width, self.short = borrow_width, short
        self.decades, self.fire = decades, fire
        self.profile = HourProfile(4, ("level", "dev"), self.day_types, utc_offset_hours,
                                   min_visits)
        self.columns = ("seen", "last_ts", "scale", "z_short") + self.profile.column_names()
        super().__init__(n_slots, warm_up=0)

    def band(self, slots: np.ndarray, ts: np.ndarray, width: float = 4.0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Expected value and band (``width`` deviations) at ``ts`` from the profile so far.

        Returns:
            ``(expected, lower, upper)``; NaN where neither slot has been learned.
        """
        rows = self.state[np.asarray(slots, dtype=np.int64)]
        level, dev, _ = self._lookup(rows, np.asarray(ts, dtype=float))
        return level, level - width * dev, level + width * dev

    def _advance(self, rows: np.ndarray, ts: np.ndarray, value: np.ndarray) -> np.ndarray:
        level, dev, known = self._lookup(rows, ts)
        z = np.where(known, (value - level) / (dev * _MAD_TO_SIGMA), 0.0)
        z = np.clip(z, -50.0, 50.0)
        rows[:, 3] += self.short * (z - rows[:, 3])
        score = np.where(known, self._score(z, rows[:, 3]), 0.0)

        self._learn(rows, ts, value, np.where(score >= self.fire, 0.1, 1.0))
        return score

    def _score(self, z: np.ndarray, z_short: np.ndarray) -> np.ndarray:
        """Decades of surprise of the stronger view, over ``decades``."""
        # A short average of independent unit surprises has this standard deviation.
        spread = np.sqrt(self.short / (2.0 - self.short))
        log_p = np.minimum(log_ndtr(-np.abs(z)), log_ndtr(-np.abs(z_short) / spread))
        # Two views, two sides each.
        decades = -np.minimum(log_p + np.log(4.0), 0.0) / LN10
        return np.minimum(decades / self.decades, 1.0)

    def _lookup(self, rows: np.ndarray, ts: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Level, deviation and whether the profile is known there, for each row."""
        level, known, borrowed = self.profile.read(rows, ts, "level")
        dev, _, _ = self.profile.read(rows, ts, "dev")
        dev = np.maximum(dev, self._floor(rows))
        dev = np.where(borrowed, self.borrow_width * dev, dev)
        return np.where(known, level, np.nan), dev, known

    def _learn(self, rows: np.ndarray, ts: np.ndarray, value: np.ndarray,
               weight: np.ndarray) -> None:
        """Fold each sample into the two hour slots around it."""
        level, known, _ = self.profile.read(rows, ts, "level")
        dev, _, _ = self.profile.read(rows, ts, "dev")
        bound = self.clip * np.maximum(dev, self._floor(rows))
        target = np.where(known, level + np.clip(value - level, -bound, bound), value)
        # A young slot learns its spread around what it has seen so far.
        seen_level, seen_any, _ = self.profile.read(rows, ts, "level", min_visits=0.5)
        spread = np.where(known, np.abs(target - level),
                          np.where(seen_any, np.abs(value - seen_level), 0.0))
        self.profile.learn(rows, ts, {"level": target, "dev": spread},
                           {"level": np.where(known, level, np.nan),
                            "dev": np.where(known, dev, np.nan)}, self.rate, weight)
        rows[:, 2] += np.maximum(0.01, 1.0 / (rows[:, 0] + 1.0)) * (np.abs(value) - rows[:, 2])

    @staticmethod
    def _floor(rows: np.ndarray) -> np.ndarray:
        """Smallest deviation: a hundredth of the series' typical size."""
        return 0.01 * rows[:, 2] + 1e-9
