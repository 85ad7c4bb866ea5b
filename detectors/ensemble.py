"""The ensemble: one vectorised detector that turns several views of a series into one score.

Views, each a tail probability (small means surprising):

- *level*: how far the sample sits from a robust running level, in units of a robust
  running deviation, tempered (a power below 1, for heavy tails), averaged over a short
  horizon and compared with the long-run distribution of that average (a likelihood in
  the spirit of Numenta's);
- *point*: the same robust distance for the sample alone, so a lone spike counts;
- *novelty*: how far the sample leaves the range the series has ever shown;
- *phase*: how far the sample sits from what the series usually shows at this hour of
  the day (a robust level and deviation per UTC hour), averaged over a short horizon and
  compared with the long-run law of that average, like the level view. It sees a day
  whose shape changes inside the usual range (a flat day, a missing daily peak), which
  the other views cannot; it speaks only after two days and only when it is far more
  surprised than the others need to be (:attr:`EnsembleConfig.phase_decades`);
- *repeat*: a run of one exact value longer than any run the series has finished (a
  counter stuck at zero, a key held down): it names the one sample where the run passes
  the longest earlier run by :attr:`EnsembleConfig.run_margin`, so a stuck series is
  reported once.

The smallest probability (Bonferroni-corrected) becomes the score: decades of surprise
over :attr:`EnsembleConfig.decades`, capped at 1. After a score reaches
:attr:`EnsembleConfig.fire`, scores are damped for :attr:`EnsembleConfig.hold` samples, or
:attr:`EnsembleConfig.hold_share` of the samples the series has seen if that is longer, so
one event is reported once, unless a sample is :attr:`EnsembleConfig.hold_break` times more
surprising than score 1 asks for: that is a new event, not the tail of the held one.
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
        level_power: the level view averages surprise raised to this power: heavy-tailed
            series (bursty counts) make bursts of large surprise that a normal law over
            the plain average overrates.
        point: robust units per standard normal unit for the single-sample view, so a
            lone spike is judged on its own and not only through the short average.
        decades: decades of surprise that map to score 1.
        fire: score from which the hold starts.
        hold: samples during which scores are damped after firing.
        hold_share: share of the series' history the hold lasts at least: an old series
            has shown how long its disturbances last (NAB: 5 % turns 18 repeat alarms
            on long tweet series into none without losing an event).
        damp: factor applied to scores during the hold.
        hold_break: multiples of :attr:`decades` of surprise that pass through a hold (NAB:
            a speed falling far below any speed seen, inside the hold of an earlier alarm).
        warm_up: samples before a series scores.
        phase_rate: per-sample learning rate of an hour's level and deviation.
        phase_short: smoothing of the short-horizon phase surprise.
        phase_days: days of history before the phase view speaks.
        phase_decades: extra decades of surprise the phase view needs: a profile of
            24 hourly cells is a rough model, so only its gross misses count.
        run_margin: share by which a run of one value must pass the longest finished run.
        run_floor: the shortest run the repeat view judges against, so short repeats of
            a coarse series are never news.
    """

    fast: float = 0.01
    short: float = 0.05
    long: float = 0.0005
    clip: float = 4.0
    z_cap: float = 30.0
    novelty_scale: float = 0.001
    forget: float = 0.0
    level_power: float = 0.75
    point: float = 8.0
    decades: float = 10.0
    fire: float = 0.47
    hold: int = 100
    hold_share: float = 0.05
    damp: float = 0.0
    hold_break: float = 10.0
    warm_up: int = 50
    phase_rate: float = 0.05
    phase_short: float = 0.02
    phase_days: float = 2.0
    phase_decades: float = 8.0
    run_margin: float = 0.25
    run_floor: float = 50.0


PHASE_CELLS = 24  # hours of the UTC day
DAY = 86_400.0
_COLUMNS = (
    "seen", "last_ts", "level", "dev", "z_short", "z_mean", "z_var", "low", "high", "hold",
    "first_ts", "phase_short", "phase_mean", "phase_var", "run", "run_longest", "run_value",
    *(f"phase_level_{h}" for h in range(PHASE_CELLS)),
    *(f"phase_dev_{h}" for h in range(PHASE_CELLS)),
)
LEVEL, DEV, Z_SHORT, Z_MEAN, Z_VAR, LOW, HIGH, HOLD = range(2, 10)
FIRST_TS, PHASE_SHORT, PHASE_MEAN, PHASE_VAR = range(10, 14)
RUN, RUN_LONGEST, RUN_VALUE = range(14, 17)
PHASE_LEVEL = 17
PHASE_DEV = PHASE_LEVEL + PHASE_CELLS
# Learning rate floor of the phase surprise law before the view speaks.
PHASE_YOUNG_RATE = 0.01


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
        rows[:, FIRST_TS] = np.nan
        rows[:, PHASE_VAR] = 1.0
        rows[:, RUN_VALUE] = np.nan
        rows[:, PHASE_LEVEL:PHASE_DEV] = 0.0
        rows[:, PHASE_DEV:] = -1.0  # an hour not seen yet

    def _advance(self, rows: np.ndarray, ts: np.ndarray, value: np.ndarray) -> np.ndarray:
        first = np.isnan(rows[:, LEVEL])
        rows[first, LEVEL] = value[first]
        rows[first, FIRST_TS] = ts[first]
        z = np.minimum(np.abs(value - rows[:, LEVEL]) / self._scale(rows), self.config.z_cap)
        log_p = np.minimum(self._level_log_p(rows, z), self._novelty_log_p(rows, value))
        log_p = np.minimum(log_p, log_ndtr(-z / self.config.point))
        log_p = np.minimum(log_p, self._phase_log_p(rows, ts, value))
        log_p = np.minimum(log_p, self._repeat_log_p(rows, value))

        # Four graded views were consulted: quadruple the smallest probability (Bonferroni).
        decades = -(np.minimum(log_p + np.log(4.0), 0.0)) / LN10
        surprise = decades / self.config.decades
        score = self._hold(rows, np.minimum(surprise, 1.0), surprise)
        self._learn(rows, value)
        return score

    def _level_log_p(self, rows: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Log tail probability of the short-horizon surprise against its long-run law.

        ``z`` is the sample's robust surprise, capped so one wild sample cannot inflate
        the surprise law for long.
        """
        cfg = self.config
        rows[:, Z_SHORT] += cfg.short * (z**cfg.level_power - rows[:, Z_SHORT])
        spread = np.sqrt(rows[:, Z_VAR]) + 1e-3
        return log_ndtr(-(rows[:, Z_SHORT] - rows[:, Z_MEAN]) / spread)

    def _novelty_log_p(self, rows: np.ndarray, value: np.ndarray) -> np.ndarray:
        """Log probability of leaving the range seen so far, by how far it is left."""
        span = rows[:, HIGH] - rows[:, LOW]
        span = np.where(np.isfinite(span), span, 0.0) + self._floor(rows)
        excess = np.maximum(value - rows[:, HIGH], rows[:, LOW] - value) / span
        excess = np.where(np.isfinite(excess), excess, 0.0)
        return -np.maximum(excess, 0.0) / self.config.novelty_scale

    def _phase_log_p(self, rows: np.ndarray, ts: np.ndarray, value: np.ndarray) -> np.ndarray:
        """Log tail probability of the short-horizon surprise against the hour's profile.

        Scores and then learns the hour's cell, so the cell never judges its own sample.
        """
        cfg = self.config
        at = np.arange(len(rows))
        cell = ((ts % DAY) / DAY * PHASE_CELLS).astype(np.int64) % PHASE_CELLS
        level, dev = rows[at, PHASE_LEVEL + cell], rows[at, PHASE_DEV + cell]
        new = dev < 0
        level = np.where(new, value, level)
        dev = np.where(new, self._scale(rows), dev)

        # A tenth of the overall deviation keeps a cell that has always been flat humble.
        width = dev + 0.1 * self._scale(rows) + self._floor(rows)
        z = np.minimum(np.abs(value - level) / width, cfg.z_cap)
        speaks = ts - rows[:, FIRST_TS] >= cfg.phase_days * DAY
        log_p = self._phase_law(rows, z, speaks) + cfg.phase_decades * LN10

        delta = np.clip(value - level, -cfg.clip * dev - 1e-12, cfg.clip * dev + 1e-12)
        rows[at, PHASE_LEVEL + cell] = level + cfg.phase_rate * delta
        rows[at, PHASE_DEV + cell] = dev + cfg.phase_rate * (np.abs(delta) - dev)
        return np.where(speaks, log_p, 0.0)

    def _repeat_log_p(self, rows: np.ndarray, value: np.ndarray) -> np.ndarray:
        """A certain event at the sample where a run of one value outlasts all earlier runs.

        Only series that have repeated a value before are judged: for a continuous
        series a repeat is an accident of rounding, not a habit broken.
        """
        cfg = self.config
        ended = value != rows[:, RUN_VALUE]
        rows[ended, RUN_LONGEST] = np.maximum(rows[ended, RUN_LONGEST], rows[ended, RUN])
        rows[:, RUN] = np.where(ended, 1.0, rows[:, RUN] + 1.0)
        rows[:, RUN_VALUE] = value

        bar = np.ceil(np.maximum(rows[:, RUN_LONGEST], cfg.run_floor) * (1 + cfg.run_margin))
        passes = (rows[:, RUN] == bar) & (rows[:, RUN_LONGEST] >= 2)
        return np.where(passes, -cfg.decades * 2 * LN10, 0.0)

    def _phase_law(self, rows: np.ndarray, z: np.ndarray, speaks: np.ndarray) -> np.ndarray:
        """Average the phase surprise, judge it by its long-run law, then teach the law.

        Until the view speaks its law learns faster, so it has settled when it does.
        """
        cfg = self.config
        rows[:, PHASE_SHORT] += cfg.phase_short * (z - rows[:, PHASE_SHORT])
        gap = rows[:, PHASE_SHORT] - rows[:, PHASE_MEAN]
        log_p = log_ndtr(-gap / (np.sqrt(rows[:, PHASE_VAR]) + 1e-3))

        rate = np.where(speaks, cfg.long, max(cfg.long, PHASE_YOUNG_RATE))
        rows[:, PHASE_MEAN] += rate * gap
        rows[:, PHASE_VAR] += rate * (gap * gap - rows[:, PHASE_VAR])
        return log_p

    def _hold(self, rows: np.ndarray, score: np.ndarray, surprise: np.ndarray) -> np.ndarray:
        """Damp scores for a while after one fired, so one event reports once.

        ``surprise`` is the score before capping at 1; far beyond 1 it breaks the hold.
        """
        holding = (rows[:, HOLD] > 0) & (surprise < self.config.hold_break)
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
