"""Bayesian online change-point detection (Adams & MacKay, 2007), truncated and batched.

Each series keeps a posterior over its *run length*: how many samples the current regime
holds. Every regime is Normal with unknown mean and precision under a Normal-Gamma prior,
so a run of ``r`` samples predicts the next with a Student-t (``2a`` degrees of freedom,
location ``m``, squared scale ``b (k + 1) / (a k)``). A new sample multiplies each run's
mass by its predictive density; with a constant hazard ``H`` each run either grows by one
(``1 - H``) or ends, and the ended mass restarts at length 0 under the prior.

Bounded state: run lengths stop at ``runs - 1``. That last slot is the long-run baseline:
mass growing into it merges with mass already there (the statistics of whichever brings
more mass are kept) and its statistics forget at ``1 / memory`` per sample, so the
baseline follows slow drift. Shorter runs have fixed ``k = k0 + r`` and ``a = a0 + r / 2``;
only ``m`` and ``b`` are stored per run. Scale: the prior of a new regime is centred on a
robust running level with variance ``(1.25 x mean absolute deviation)^2``, so the
detector is unit-free like :mod:`detectors.cusum`.

Score: under a constant hazard the mass at length 0 is always ``H``, so the signal is
the mass on *short* runs (fewer than ``short`` samples), over ``confirm``, capped at 1.
A score of 1 confirms a change: it is reported once (the series disarms until the short
mass falls below half of ``confirm``) and the level restarts at the new value; the new
regime becomes the baseline as its run grows into the last slot.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln

from detectors.table import SEEN, TableDetector

LEVEL, DEV, ARMED, K_TOP, A_TOP = range(2, 7)
FIXED = 7  # columns before the per-run blocks
K0, A0 = 0.01, 1.0  # prior: a vague mean, one pseudo-observation's worth of variance
SPREAD = 1.25  # standard deviation over mean absolute deviation, for Normal noise


class Bocpd(TableDetector):
    """Run-length posterior change-point detector over many series.

    Args:
        n_slots: series slots to allocate.
        runs: run lengths kept (state is ``7 + 3 x runs`` float64 per series).
        short: runs shorter than this count as a recent change.
        hazard: prior probability that any sample starts a new regime.
        confirm: short-run mass at which the score reaches 1.
        memory: samples the long-run baseline remembers.
        outlier: weight of a one-sample outlier in every run's predictive (0 disables);
            a lone wild sample is then explained as an outlier, not as two changes.
        rate: update rate of the robust level and scale once warm.
        warm_up: samples before a series scores.
    """

    def __init__(self, n_slots: int = 1, *, runs: int = 32, short: int = 16,
                 hazard: float = 1 / 250, confirm: float = 0.5, memory: float = 256.0,
                 outlier: float = 0.01, rate: float = 0.02, warm_up: int = 30) -> None:
        self.runs, self.short, self.hazard, self.confirm = runs, short, hazard, confirm
        self.keep, self.outlier, self.rate = 1.0 - 1.0 / memory, outlier, rate
        self.columns = ("seen", "last_ts", "level", "dev", "armed", "k_top", "a_top",
                        *(f"{kind}{r}" for kind in "pmb" for r in range(runs)))
        self._k = K0 + np.arange(runs, dtype=float)
        self._a = A0 + 0.5 * np.arange(runs, dtype=float)
        self._c = _t_constant(self._k, self._a)
        self._half_k = self._k / (2 * (self._k + 1))
        self._neg_power = -(self._a + 0.5)
        super().__init__(n_slots, warm_up=warm_up)

    def _initial_rows(self, rows: np.ndarray) -> None:
        rows[:, ARMED] = 1.0
        rows[:, K_TOP], rows[:, A_TOP] = self._k[-1], self._a[-1]
        rows[:, FIXED] = 1.0  # all mass on "no sample yet"
        rows[:, FIXED + 2 * self.runs :] = 1.0  # any positive b: empty runs are never read

    def _blocks(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Views of the run masses, means and ``b`` of ``rows``."""
        n = self.runs
        return (rows[:, FIXED : FIXED + n], rows[:, FIXED + n : FIXED + 2 * n],
                rows[:, FIXED + 2 * n :])

    def _advance(self, rows: np.ndarray, ts: np.ndarray, value: np.ndarray) -> np.ndarray:
        first = rows[:, SEEN] == 0
        rows[first, LEVEL] = value[first]
        mass, mean, b = self._blocks(rows)
        scale = SPREAD * (rows[:, DEV] + 1e-9 * np.abs(rows[:, LEVEL]) + 1e-12)
        mean[:, 0], b[:, 0] = rows[:, LEVEL], A0 * scale**2

        weight = mass * np.exp(self._log_predictive(rows, value, mass > 0))
        total = weight.sum(axis=1)
        self._update_runs(rows, value, weight)
        mass /= total[:, None]

        short = mass[:, : self.short].sum(axis=1)
        return self._report(rows, value, short)

    def _log_predictive(self, rows: np.ndarray, value: np.ndarray, held: np.ndarray
                        ) -> np.ndarray:
        """Student-t log density of ``value`` under every run, shifted so the largest
        among runs that hold mass is 0 (only ratios matter; empty runs are capped at 0 so
        they cannot overflow)."""
        _, mean, b = self._blocks(rows)
        log_t = np.subtract(value[:, None], mean)
        np.square(log_t, out=log_t)
        log_t *= self._half_k
        log_t /= b
        np.log1p(log_t, out=log_t)
        log_t *= self._neg_power
        log_t -= 0.5 * np.log(b)
        log_t += self._c

        # The baseline's k and a are its own.
        k, a = rows[:, K_TOP], rows[:, A_TOP]
        gap = (value - mean[:, -1]) ** 2 * k / (2 * b[:, -1] * (k + 1))
        log_t[:, -1] = (_t_constant(k, a) - 0.5 * np.log(b[:, -1])
                        - (a + 0.5) * np.log1p(gap))
        if self.outlier > 0:
            # A sample the prior alone explains may be an outlier rather than a change.
            log_t = np.logaddexp(np.log1p(-self.outlier) + log_t,
                                 np.log(self.outlier) + log_t[:, :1])
        log_t -= np.where(held, log_t, -np.inf).max(axis=1, keepdims=True)
        return np.minimum(log_t, 0.0, out=log_t)

    def _update_runs(self, rows: np.ndarray, value: np.ndarray, weight: np.ndarray) -> None:
        """Grow every run by the sample, restart one at length 0, merge at the top."""
        mass, mean, b = self._blocks(rows)
        k, x = self._k[None, :-1], value[:, None]
        grown_mean = (k * mean[:, :-1] + x) / (k + 1)
        grown_b = b[:, :-1] + k * (x - mean[:, :-1]) ** 2 / (2 * (k + 1))
        top_k, top_mean, top_b = self._forget_top(rows, value)

        # The baseline keeps the statistics of whichever run brings it more mass.
        stay = weight[:, -1] >= weight[:, -2]
        mean[:, -1] = np.where(stay, top_mean, grown_mean[:, -1])
        b[:, -1] = np.where(stay, top_b, grown_b[:, -1])
        rows[:, K_TOP] = np.where(stay, top_k, self._k[-1])
        rows[:, A_TOP] = np.where(stay, self.keep * rows[:, A_TOP] + 0.5, self._a[-1])
        mean[:, 1:-1], b[:, 1:-1] = grown_mean[:, :-1], grown_b[:, :-1]

        mass[:, -1] = (weight[:, -1] + weight[:, -2]) * (1 - self.hazard)
        mass[:, 1:-1] = weight[:, :-2] * (1 - self.hazard)
        mass[:, 0] = weight.sum(axis=1) * self.hazard

    def _forget_top(self, rows: np.ndarray, value: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The baseline's ``k``, mean and ``b`` after forgetting a little and learning."""
        _, mean, b = self._blocks(rows)
        k = self.keep * rows[:, K_TOP]
        gap = value - mean[:, -1]
        return k + 1, mean[:, -1] + gap / (k + 1), self.keep * b[:, -1] + k * gap**2 / (
            2 * (k + 1))

    def _report(self, rows: np.ndarray, value: np.ndarray, short: np.ndarray) -> np.ndarray:
        """Score, report a change once, keep warm-up quiet, and learn the level."""
        mass = self._blocks(rows)[0]
        score = np.minimum(short / self.confirm, 1.0)
        young = rows[:, SEEN] < self.warm_up

        # Warm-up assumes no change: all mass on the run holding every sample so far.
        if young.any():
            mass[young] = 0.0
            top = np.minimum(rows[young, SEEN] + 1, self.runs - 1).astype(np.int64)
            mass[np.flatnonzero(young), top] = 1.0

        armed = rows[:, ARMED] > 0
        changed = armed & (score >= 1.0) & ~young
        rows[:, ARMED] = np.where(changed, 0.0, np.where(short < self.confirm / 2, 1.0,
                                                         rows[:, ARMED]))
        rows[changed, LEVEL] = value[changed]
        self._learn(rows, value, ~changed)
        return np.where(armed, score, 0.0)

    def _learn(self, rows: np.ndarray, value: np.ndarray, calm: np.ndarray) -> None:
        rate = np.maximum(self.rate, 1.0 / (rows[:, SEEN] + 1.0))
        delta = np.where(calm, value - rows[:, LEVEL], 0.0)
        bound = 4.0 * rows[:, DEV] + 1e-12
        warm = rows[:, SEEN] >= self.warm_up
        clipped = np.where(warm, np.clip(delta, -bound, bound), delta)
        rows[:, LEVEL] += rate * clipped
        rows[:, DEV] += rate * calm * (np.abs(clipped) - rows[:, DEV])


def _t_constant(k: np.ndarray, a: np.ndarray) -> np.ndarray:
    """The part of the Student-t log density that depends on ``k`` and ``a`` alone."""
    return gammaln(a + 0.5) - gammaln(a) - 0.5 * np.log(2 * np.pi * (k + 1) / k)
