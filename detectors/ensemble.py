"""The ensemble: one vectorised detector that turns several views of a series into one score.

Views, each a tail probability (small means surprising):

- *level*: how far the sample sits from a robust running level, in units of a robust
  running deviation, averaged over a short horizon and compared with the long-run
  distribution of that average (a likelihood in the spirit of Numenta's);
- *point*: the same robust distance for the sample alone, so a lone spike counts;
- *novelty*: how far the sample leaves the range the series has ever shown.

The smallest probability (Bonferroni-corrected) becomes the score: decades of surprise
over :attr:`EnsembleConfig.decades`, capped at 1. After a score reaches
:attr:`EnsembleConfig.fire`, scores are damped for :attr:`EnsembleConfig.hold` samples, or
:attr:`EnsembleConfig.hold_share` of the samples the series has seen if that is longer, so
one event is reported once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr

from detectors.table import TableDetector

LN10 = np.log(10.0)


@dataclass(frozen=True, slots=True)
class EnsembleConfig:
    """Tuning of the ensemble; one configuration serves every series.

    Attributes:
        fast: smoothing of the running level and deviation (per sample).
        short: smoothing of the short-horizon surprise.
        long: smoothing of the long-run distribution of that surprise.
        clip: deviations beyond this many robust units move the level no further,
            so an anomaly barely teaches the baseline.
        z_cap: largest surprise one sample can contribute.
        novelty_scale: range fractions per e-fold of novelty probability.
        forget: per-sample pull of the remembered range towards the level, so that
            novelty is judged against recent history rather than all of it.
        point: robust units per standard normal unit for the single-sample view, so a
            lone spike is judged on its own and not only through the short average.
        decades: decades of surprise that map to score 1.
        fire: score from which the hold starts.
        hold: samples during which scores are damped after firing.
        hold_share: share of the series' history the hold lasts at least: an old series
            has shown how long its disturbances last (NAB: 5 % turns 18 repeat alarms
            on long tweet series into none without losing an event).
        damp: factor applied to scores during the hold.
        warm_up: samples before a series scores.
    """

    fast: float = 0.01
    short: float = 0.05
    long: float = 0.0005
    clip: float = 4.0
    z_cap: float = 30.0
    novelty_scale: float = 0.001
    forget: float = 0.0
    point: float = 8.0
    decades: float = 10.0
    fire: float = 0.47
    hold: int = 100
    hold_share: float = 0.05
    damp: float = 0.0
    warm_up: int = 50


_COLUMNS = (
    "seen", "last_ts", "level", "dev", "z_short", "z_mean", "z_var", "low", "high", "hold",
)
LEVEL, DEV, Z_SHORT, Z_MEAN, Z_VAR, LOW, HIGH, HOLD = range(2, 10)


class Ensemble(TableDetector):
    """The default detector of every series: see the module docstring.

    Args:
        n_slots: series slots to allocate.
        config: tuning shared by every series.
    """

    columns = _COLUMNS

    def __init__(self, n_slots: int = 1, config: EnsembleConfig | None = None) -> None:
        self.config = config or EnsembleConfig()
        super().__init__(n_slots, warm_up=self.config.warm_up)

    def _initial_rows(self, rows: np.ndarray) -> None:
        rows[:, LEVEL] = np.nan
        rows[:, Z_VAR] = 1.0
        rows[:, LOW] = np.inf
        rows[:, HIGH] = -np.inf

    def _advance(self, rows: np.ndarray, ts: np.ndarray, value: np.ndarray) -> np.ndarray:
        first = np.isnan(rows[:, LEVEL])
        rows[first, LEVEL] = value[first]
        z = np.minimum(np.abs(value - rows[:, LEVEL]) / self._scale(rows), self.config.z_cap)
        log_p = np.minimum(self._level_log_p(rows, z), self._novelty_log_p(rows, value))
        log_p = np.minimum(log_p, log_ndtr(-z / self.config.point))

        # Three views were consulted: triple the smallest probability (Bonferroni).
        decades = -(np.minimum(log_p + np.log(3.0), 0.0)) / LN10
        score = np.minimum(decades / self.config.decades, 1.0)
        score = self._hold(rows, score)
        self._learn(rows, value)
        return score

    def _level_log_p(self, rows: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Log tail probability of the short-horizon surprise against its long-run law.

        ``z`` is the sample's robust surprise, capped so one wild sample cannot inflate
        the surprise law for long.
        """
        cfg = self.config
        rows[:, Z_SHORT] += cfg.short * (z - rows[:, Z_SHORT])
        spread = np.sqrt(rows[:, Z_VAR]) + 1e-3
        return log_ndtr(-(rows[:, Z_SHORT] - rows[:, Z_MEAN]) / spread)

    def _novelty_log_p(self, rows: np.ndarray, value: np.ndarray) -> np.ndarray:
        """Log probability of leaving the range seen so far, by how far it is left."""
        span = rows[:, HIGH] - rows[:, LOW]
        span = np.where(np.isfinite(span), span, 0.0) + self._floor(rows)
        excess = np.maximum(value - rows[:, HIGH], rows[:, LOW] - value) / span
        excess = np.where(np.isfinite(excess), excess, 0.0)
        return -np.maximum(excess, 0.0) / self.config.novelty_scale

    def _hold(self, rows: np.ndarray, score: np.ndarray) -> np.ndarray:
        """Damp scores for a while after one fired, so one event reports once."""
        holding = rows[:, HOLD] > 0
        score = np.where(holding, score * self.config.damp, score)
        rows[:, HOLD] = np.maximum(rows[:, HOLD] - 1, 0)
        fired = (score >= self.config.fire) & (rows[:, 0] >= self.warm_up)
        hold = np.maximum(self.config.hold, self.config.hold_share * rows[fired, 0])
        rows[fired, HOLD] = np.ceil(hold)
        return score

    def _learn(self, rows: np.ndarray, value: np.ndarray) -> None:
        """Fold the sample into level, deviation, surprise law and range."""
        cfg = self.config
        scale = self._scale(rows)
        # Young series average everything seen so far, then settle on the configured rate.
        young = 1.0 / (rows[:, 0] + 1.0)
        fast, long = np.maximum(cfg.fast, young), np.maximum(cfg.long, young)
        delta = value - rows[:, LEVEL]
        bound = cfg.clip * scale
        clipped = np.where(rows[:, 0] < 2, delta, np.clip(delta, -bound, bound))
        rows[:, LEVEL] += fast * clipped
        rows[:, DEV] += fast * (np.abs(clipped) - rows[:, DEV])

        gap = rows[:, Z_SHORT] - rows[:, Z_MEAN]
        rows[:, Z_MEAN] += long * gap
        rows[:, Z_VAR] += long * (gap * gap - rows[:, Z_VAR])
        rows[:, LOW] = np.minimum(rows[:, LOW], value)
        rows[:, HIGH] = np.maximum(rows[:, HIGH], value)
        rows[:, LOW] += cfg.forget * (rows[:, LEVEL] - rows[:, LOW])
        rows[:, HIGH] += cfg.forget * (rows[:, LEVEL] - rows[:, HIGH])

    def _scale(self, rows: np.ndarray) -> np.ndarray:
        """Robust deviation, floored so that a flat series does not divide by zero."""
        return rows[:, DEV] + self._floor(rows)

    @staticmethod
    def _floor(rows: np.ndarray) -> np.ndarray:
        span = rows[:, HIGH] - rows[:, LOW]
        span = np.where(np.isfinite(span), span, 0.0)
        return 1e-3 * span + 1e-9 * np.abs(rows[:, LEVEL]) + 1e-12
