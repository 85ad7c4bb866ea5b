"""Count-aware detection for low-volume KPIs: orders a store takes, judged as counts.

A store that sells three orders an hour and sells none in a quiet hour is normal; one
that sells none in its busiest hour is not. A normal model on such a series is wrong
both ways: a single zero looks extreme, a long run of zeros looks mild. Here each series
keeps an expected rate for every hour of every day type (the slots of
:mod:`detectors.seasonal`, borrowing the first day type's hour while a slot is young),
and the counts and expected counts of the last ``window`` samples or so (exponentially
weighted) are compared as Poisson counts, scaled by a learned dispersion so that
over-dispersed series are not over-alarmed.

A shortfall matters in proportion to the trade at stake: the downward score is scaled by
the expected rate over ``quiet_share`` of the series' busiest rate, so a quiet Sunday
night does not page while an empty busiest hour does. Samples scoring at least ``fire``
teach the profile at a tenth of the usual rate.

Each sample also records its *side*: +1 when the highest-scoring window and tail is a
surplus, -1 when it is a shortfall. A surplus window may hold a minute with no sale (and
a shortfall a minute with a big basket), so the direction of a verdict is the side, not
one sample against the expected value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import gammainc, gammaincc

from detectors.seasonal import LN10, WEEKDAYS_SATURDAY_SUNDAY, HourProfile
from detectors.table import TableDetector

SEEN, LAST_TS, OBSERVED, EXPECTED, DISPERSION, PEAK, OBSERVED_LONG, EXPECTED_LONG = range(8)
_PROFILE = 8
_TINY = 1e-300


class PoissonCounts(TableDetector):
    """Seasonal Poisson rates per series; see the module docstring.

    Args:
        n_slots: series slots to allocate.
        day_types: day type of Monday..Sunday (types numbered from 0).
        utc_offset_hours: local time offset, so hours are the shop's hours.
        counts_per_value: counts one unit of value stands for (5 for a per-minute rate
            sampled every 5 minutes).
        rate: per-sample smoothing of a slot's expected rate once learned; a
            slot sees an hour of samples per visit, so 0.002 remembers about eight
            visits of one-minute samples.
        min_visits: samples a slot needs before it judges on its own.
        borrow_dispersion: extra dispersion when judging with a borrowed slot.
        window: samples the compared counts span, roughly: a sudden change.
        long_window: the same for slow stores, where only hours of counts say anything.
        quiet_share: share of the busiest rate under which shortfalls count less.
        decades: decades of surprise that map to score 1.
        fire: score from which a sample teaches the profile at a tenth of the rate.
        widen_alone: judge with ``borrow_dispersion`` where only one neighbouring hour
            is learned (a new series' first day): fewer false alarms, slower start.
    """

    def __init__(self, n_slots: int = 1, *, day_types: Sequence[int] = WEEKDAYS_SATURDAY_SUNDAY,
                 utc_offset_hours: float = 0.0, counts_per_value: float = 1.0,
                 rate: float = 0.002, min_visits: int = 30, borrow_dispersion: float = 3.0,
                 window: float = 15.0, long_window: float = 120.0, quiet_share: float = 0.25,
                 decades: float = 6.0, fire: float = 0.5, widen_alone: bool = False) -> None:
        self.day_types = tuple(int(t) for t in day_types)
        self.utc_offset_hours, self.counts_per_value = utc_offset_hours, counts_per_value
        self.rate, self.min_visits, self.borrow_dispersion = rate, min_visits, borrow_dispersion
        self.window, self.long_window, self.quiet_share = window, long_window, quiet_share
        self.decades, self.fire = decades, fire
        self.profile = HourProfile(_PROFILE, ("rate",), self.day_types, utc_offset_hours,
                                   min_visits, widen_alone=widen_alone)
        self.columns = ("seen", "last_ts", "observed", "expected", "dispersion", "peak",
                        "observed_long", "expected_long") + self.profile.column_names()
        self.columns += ("side",)
        self._side = len(self.columns) - 1
        super().__init__(n_slots, warm_up=0)

    def _initial_rows(self, rows: np.ndarray) -> None:
        rows[:, DISPERSION] = 1.0

    def band(self, slots: np.ndarray, ts: np.ndarray, width: float = 4.0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Expected value and a band of ``width`` Poisson deviations around it.

        Returns:
            ``(expected, lower, upper)`` in the series' units; NaN where not learned.
        """
        rows = self.state[np.asarray(slots, dtype=np.int64)]
        mean, known, _ = self._lookup(rows, np.asarray(ts, dtype=float))
        counts = mean * self.counts_per_value
        half = width * np.sqrt(np.maximum(counts, 1.0) * rows[:, DISPERSION])
        lower = np.maximum(counts - half, 0.0) / self.counts_per_value
        upper = (counts + half) / self.counts_per_value
        return np.where(known, mean, np.nan), lower, upper

    def side(self, slots: np.ndarray) -> np.ndarray:
        """Side of each series' latest score: +1 when the window and tail that scored
        highest is a surplus, -1 a shortfall, 0 before any learned sample."""
        return self.state[np.asarray(slots, dtype=np.int64), self._side].copy()

    def _advance(self, rows: np.ndarray, ts: np.ndarray, value: np.ndarray) -> np.ndarray:
        mean, known, borrowed = self._lookup(rows, ts)
        # A count below zero is a broken collector, not a count: read it as none.
        counts = np.maximum(value, 0.0) * self.counts_per_value
        expected = np.where(known, mean * self.counts_per_value, counts)
        score, side = np.zeros(len(rows)), np.zeros(len(rows))
        for obs, exp, window in ((OBSERVED, EXPECTED, self.window),
                                 (OBSERVED_LONG, EXPECTED_LONG, self.long_window)):
            decay = 1.0 - 1.0 / window
            rows[:, obs] = decay * rows[:, obs] + counts
            rows[:, exp] = decay * rows[:, exp] + expected
            short, surplus = self._score(rows, borrowed, obs, exp, window)
            for tail, sign in ((short, -1.0), (surplus, 1.0)):
                side = np.where(tail > score, sign, side)
                score = np.maximum(score, tail)
        score = np.where(known, score, 0.0)
        rows[:, self._side] = np.where(known, side, 0.0)

        self._learn_dispersion(rows, ts, counts)
        self._learn_profile(rows, ts, value, np.where(score >= self.fire, 0.1, 1.0))
        return score

    def _score(self, rows: np.ndarray, borrowed: np.ndarray, obs: int, exp: int,
               window: float) -> tuple[np.ndarray, np.ndarray]:
        """Scores of one window's shortfall and surplus (Poisson tails); shortfalls
        weighed by the trade at stake."""
        dispersion = rows[:, DISPERSION] * np.where(borrowed, self.borrow_dispersion, 1.0)
        observed = rows[:, obs] / dispersion
        expected = np.maximum(rows[:, exp] / dispersion, 1e-9)
        # P(X <= k) and P(X >= k) for a Poisson X, continuous in k.
        low = np.log(np.maximum(gammaincc(observed + 1.0, expected), _TINY))
        high = np.where(observed > 0, np.log(np.maximum(
            gammainc(np.maximum(observed, 1e-12), expected), _TINY)), 0.0)
        to_score = lambda log_p: np.minimum(  # noqa: E731
            -np.minimum(log_p + np.log(4.0), 0.0) / LN10 / self.decades, 1.0)

        # Two windows, two sides each: the Bonferroni factor above is 4.
        at_stake = rows[:, exp] / (window * self.counts_per_value)
        relevance = np.clip(at_stake / (self.quiet_share * rows[:, PEAK] + 1e-12), 0.0, 1.0)
        return to_score(low) * relevance, to_score(high)

    def _lookup(self, rows: np.ndarray, ts: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Expected rate, whether it is learned, and whether it is borrowed, per row."""
        return self.profile.read(rows, ts, "rate")

    def _learn_dispersion(self, rows: np.ndarray, ts: np.ndarray, counts: np.ndarray
                          ) -> None:
        """Variance over mean of the counts around the profile's rate, at least 1.

        Learned as soon as the profile has seen the hour, so that a series of money
        (revenue: counts of orders times a basket) gets its scale before its first verdict.
        """
        rate, seen, _ = self.profile.read(rows, ts, "rate", min_visits=2)
        mean = rate * self.counts_per_value
        excess = (counts - mean) ** 2 / np.maximum(mean, 1.0)
        # Bounded so that one wild sample widens the bands by a tenth at most.
        excess = np.minimum(excess, 10.0 * rows[:, DISPERSION])
        young = np.maximum(0.01, 1.0 / (rows[:, SEEN] + 1.0))
        rows[seen, DISPERSION] += young[seen] * (excess[seen] - rows[seen, DISPERSION])
        rows[:, DISPERSION] = np.maximum(rows[:, DISPERSION], 1.0)

    def _learn_profile(self, rows: np.ndarray, ts: np.ndarray, value: np.ndarray,
                       weight: np.ndarray) -> None:
        """Fold each sample into the hour slots around it; track the busiest rate."""
        rate, known, _ = self.profile.read(rows, ts, "rate")
        self.profile.learn(rows, ts, {"rate": np.maximum(value, 0.0)},
                           {"rate": np.where(known, rate, np.nan)}, self.rate, weight)
        n = self.profile.n_slots
        learned = rows[:, _PROFILE + n: _PROFILE + 2 * n] >= self.profile.min_visits
        rows[:, PEAK] = np.max(np.where(learned, rows[:, _PROFILE: _PROFILE + n], 0.0), axis=1)
