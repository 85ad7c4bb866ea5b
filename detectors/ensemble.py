"""The ensemble: one vectorised detector that turns several views of a series into one score.

Views, each a tail probability (small means surprising):

- *level*: how far the sample sits from a robust running level, in units of a robust
  running deviation, tempered (a power below 1, for heavy tails), averaged over a short
  horizon and compared with the long-run distribution of that average (a likelihood in
  the spirit of Numenta's);
- *novelty*: how far the sample leaves the range the series has ever shown;
- *phase*: how far the sample sits from what the series usually shows at this hour of
  the day (a robust level and deviation per UTC hour), averaged over a short horizon and
  compared with the long-run law of that average, like the level view. It sees a day
  whose shape changes inside the usual range (a flat day, a missing daily peak), which
  the other views cannot; it speaks only after three days and only when it is far more
  surprised than the others need to be (:attr:`EnsembleConfig.phase_decades`);
- *repeat*: a run of one exact value longer than any run the series has finished (a
  counter stuck at zero, a key held down): it names the one sample where the run passes
  the longest earlier run by :attr:`EnsembleConfig.run_margin`, so a stuck series is
  reported once;
- *shape*: how far the last few samples, as a short sequence, lie from their nearest
  neighbours among sequences kept from the recent past (a bounded reservoir, one kept
  every few samples), averaged over a short horizon and judged by its long-run law. It
  sees a day that looks unlike the days before while every value stays in range (a
  holiday in a taxi series), which is KNN CAD's idea with the reservoir cut to fit the
  state budget;
- *drift*: how far the running level has moved from a slower running level, in units of
  the robust deviation, against the long-run law of that distance. The running level
  follows a shift within about a hundred samples, so the level view's surprise fades;
  the slow level lags for several hundred more, so a week of quieter trade (a holiday in
  a taxi series) still stands out.

The smallest probability (Bonferroni-corrected for the graded views) becomes the score:
decades of surprise over :attr:`EnsembleConfig.decades`, capped at 1. After a score reaches
:attr:`EnsembleConfig.fire`, scores are damped for :attr:`EnsembleConfig.hold` samples, or
:attr:`EnsembleConfig.hold_share` of the samples the series has seen if that is longer (up
to :attr:`EnsembleConfig.hold_max`), and for as long as the view that fired keeps scoring
that high, so one event is reported once. A point view (novelty, repeat) judges the sample
alone, so its alarm inside a hold that another view started is a new fault (a level alarm,
then a value below any seen; a spike, then a counter stuck) and passes; the averaging views
keep echoing a strong sample for a while and stay held. A sample
:attr:`EnsembleConfig.hold_break` times more surprising than score 1 asks for passes any
hold: a new event, not the held one's tail.
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
        decades: decades of surprise that map to score 1.
        fire: score from which the hold starts. The detector stage sets it to its alarm
            threshold, so a hold always follows a reported anomaly: a score below the
            threshold raises nothing and must not hold back the next alarm (NAB: 0.48 and
            0.5 both score 74.6, 0.47 74.4, 0.52 73.1).
        hold: samples during which scores are damped after firing (except a point view's
            alarm in a hold another view started).
        hold_share: share of the series' history the hold lasts at least: an old series
            has shown how long its disturbances last (NAB: 5 % turned 18 repeat alarms
            on long tweet series into none; with the drift view, 3 %, so a holiday a
            week after another one is still reported).
        hold_max: the longest hold, in samples, whether from the history share or from
            an event that goes on. NAB's longest file (22,695 samples) holds 681 at most;
            a series scraped each minute for a year would otherwise hold for eleven days
            after each alarm.
        damp: factor applied to scores during the hold.
        hold_break: multiples of :attr:`decades` of surprise that pass through a hold (NAB:
            a speed falling far below any speed seen, inside the hold of an earlier alarm).
        warm_up: samples before a series scores.
        phase_rate: per-sample learning rate of an hour's level and deviation.
        phase_short: smoothing of the short-horizon phase surprise.
        phase_days: days of history before the phase view speaks: each hour's cell
            needs a few days before its deviation means much (NAB: 2.5-4 days score
            75.3-75.4, 2 days 75.1, 5 days 75.1).
        phase_decades: extra decades of surprise the phase view needs: a profile of
            24 hourly cells is a rough model, so only its gross misses count.
        run_margin: share by which a run of one value must pass the longest finished run
            (NAB: 0.1-0.22 score alike, 75.1; 0.25 74.8 and 0.3 74.0 find a stuck key and
            a stuck disk later in their windows).
        run_floor: the shortest run the repeat view judges against, so short repeats of
            a coarse series are never news.
        shape_width: samples in one sequence of the shape view.
        shape_kept: sequences the shape view keeps per series (its reservoir).
        shape_stride: samples between two kept sequences, so the reservoir spans
            ``shape_kept * shape_stride`` samples.
        shape_neighbours: neighbours whose mean distance is the sequence's strangeness.
        shape_short: smoothing of the short-horizon log distance.
        shape_long: smoothing of the long-run law of that average.
        shape_after: samples before the shape view speaks.
        shape_decades: extra decades of surprise the shape view needs.
        drift_slow: smoothing of the slow level the drift view compares the running
            level with.
        drift_after: samples before the drift view speaks.
        drift_decades: extra decades of surprise the drift view needs; below 0 it counts
            for more than its law says (NAB: -0.5 is the middle of the plateau measured,
            0 and -1 its edges).
    """

    fast: float = 0.01
    short: float = 0.05
    long: float = 0.0005
    clip: float = 4.0
    z_cap: float = 30.0
    novelty_scale: float = 0.001
    forget: float = 0.0
    level_power: float = 0.75
    decades: float = 10.0
    fire: float = 0.5
    hold: int = 100
    hold_share: float = 0.03
    hold_max: int = 720
    damp: float = 0.0
    hold_break: float = 10.0
    warm_up: int = 50
    phase_rate: float = 0.05
    phase_short: float = 0.02
    phase_days: float = 3.0
    phase_decades: float = 8.0
    run_margin: float = 0.15
    run_floor: float = 50.0
    shape_width: int = 4
    shape_kept: int = 96
    shape_stride: int = 3
    shape_neighbours: int = 3
    shape_short: float = 0.05
    shape_long: float = 0.002
    shape_after: int = 600
    shape_decades: float = 1.0
    drift_slow: float = 0.003
    drift_after: int = 600
    drift_decades: float = -0.5


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
SHAPE_SHORT, SHAPE_MEAN, SHAPE_VAR, SHAPE_LEARNED = range(PHASE_DEV + PHASE_CELLS,
                                                          PHASE_DEV + PHASE_CELLS + 4)
VIEW = SHAPE_LEARNED + 1  # index in VIEWS of the view that decided the latest score
DRIFT_LEVEL, DRIFT_MEAN, DRIFT_VAR = range(VIEW + 1, VIEW + 4)
HOLD_VIEW = VIEW + 4  # the view whose alarm started the hold (-1: not recorded)
HELD_FOR = VIEW + 5  # samples since the hold started
HELD_SCORE = VIEW + 6  # the latest sample's score before the hold damped it (0: not held)
SHAPE_SEQUENCE = VIEW + 7  # the last shape_width samples, oldest first
# The views, in the order ``_advance`` consults them, and what each one's surprise means.
VIEWS = {
    "level": "a sustained shift from the running level",
    "novelty": "beyond the range the series has shown",
    "phase": "unlike this hour of the day",
    "repeat": "one value repeated longer than ever before",
    "shape": "the last samples unlike any recent sequence",
    "drift": "the level drifting from where it has been for hundreds of samples",
}
# Views that judge the sample alone, without averaging: they do not echo another view's event.
POINT_VIEWS = np.array([list(VIEWS).index("novelty"), list(VIEWS).index("repeat")])
# Views whose probability is graded (repeat is certain or silent): the Bonferroni factor.
GRADED_VIEWS = len(VIEWS) - 1
# Learning rate floor of the phase surprise law before the view speaks.
PHASE_YOUNG_RATE = 0.01


class Ensemble(TableDetector):
    """The default detector of every series: see the module docstring.

    Args:
        n_slots: series slots to allocate.
        config: tuning shared by every series.
    """

    def __init__(self, n_slots: int = 1, config: EnsembleConfig | None = None) -> None:
        self.config = config or EnsembleConfig()
        self.columns = _shape_columns(self.config)
        self._kept_at = SHAPE_SEQUENCE + self.config.shape_width
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
        rows[:, PHASE_DEV:PHASE_DEV + PHASE_CELLS] = -1.0  # an hour not seen yet
        rows[:, SHAPE_VAR] = 1.0
        rows[:, DRIFT_LEVEL] = np.nan
        rows[:, DRIFT_VAR] = 1.0
        rows[:, HOLD_VIEW] = -1.0
        rows[:, SHAPE_SEQUENCE:self._kept_at] = np.nan  # no sequence seen or kept yet
        self._reservoir(rows)[...] = np.nan

    def _advance(self, rows: np.ndarray, ts: np.ndarray, value: np.ndarray) -> np.ndarray:
        first = np.isnan(rows[:, LEVEL])
        rows[first, LEVEL] = value[first]
        rows[first, FIRST_TS] = ts[first]
        shape_log_p = self._shape_log_p(rows, value)
        z = np.minimum(np.abs(value - rows[:, LEVEL]) / self._scale(rows), self.config.z_cap)
        views = np.stack([
            self._level_log_p(rows, z), self._novelty_log_p(rows, value),
            self._phase_log_p(rows, ts, value),
            self._repeat_log_p(rows, value), shape_log_p, self._drift_log_p(rows),
        ])
        rows[:, VIEW] = np.argmin(views, axis=0)
        log_p = views.min(axis=0)

        decades = -(np.minimum(log_p + np.log(GRADED_VIEWS), 0.0)) / LN10
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

    def _shape_log_p(self, rows: np.ndarray, value: np.ndarray) -> np.ndarray:
        """Log tail probability of the recent sequence's distance to its nearest kept ones.

        Distances are in units of the series' robust deviation. The sequence is judged
        before it can be kept, so it never meets itself.
        """
        cfg = self.config
        sequence = rows[:, SHAPE_SEQUENCE:self._kept_at]
        sequence[:, :-1] = sequence[:, 1:].copy()
        sequence[:, -1] = value
        reservoir = self._reservoir(rows)

        squared = self._squared_distances(reservoir, sequence)
        nearest = np.partition(squared, cfg.shape_neighbours - 1, axis=1)
        distance = np.sqrt(nearest[:, : cfg.shape_neighbours]).mean(axis=1)
        strangeness = np.log(distance / self._scale(rows) + 1e-9)
        full = ~np.isnan(reservoir[:, -1, 0]) & np.isfinite(strangeness)
        log_p = self._shape_law(rows, np.where(full, strangeness, 0.0), full)

        self._keep_sequence(rows, sequence, reservoir)
        speaks = full & (rows[:, 0] >= cfg.shape_after)
        return np.where(speaks, np.minimum(log_p + cfg.shape_decades * LN10, 0.0), 0.0)

    def _drift_log_p(self, rows: np.ndarray) -> np.ndarray:
        """Log tail probability of the running level's distance from the slow level.

        Judged before the slow level and the law learn the sample, like the other views.
        """
        cfg = self.config
        level = rows[:, LEVEL]
        slow = np.where(np.isnan(rows[:, DRIFT_LEVEL]), level, rows[:, DRIFT_LEVEL])
        distance = np.minimum(np.abs(level - slow) / self._scale(rows), cfg.z_cap)
        young = 1.0 / (rows[:, 0] + 1.0)
        law_rate = np.maximum(cfg.long, young)
        log_p = _judge_by_law(rows, distance, (DRIFT_MEAN, DRIFT_VAR), law_rate)

        rows[:, DRIFT_LEVEL] = slow + np.maximum(cfg.drift_slow, young) * (level - slow)
        speaks = rows[:, 0] >= cfg.drift_after
        return np.where(speaks, np.minimum(log_p + cfg.drift_decades * LN10, 0.0), 0.0)

    def held_score(self, slots: np.ndarray) -> np.ndarray:
        """Each slot's latest score before the hold damped it, 0 when it was not held.

        From :attr:`EnsembleConfig.fire` on, the event reported when the hold started
        still goes on (its own view, or another one echoing it): a caller may remind of
        it.
        """
        return self.state[np.asarray(slots, dtype=np.int64), HELD_SCORE].copy()

    def deciding_view(self, slots: np.ndarray) -> list[str]:
        """Name of the view (a key of :data:`VIEWS`) that decided each slot's last score."""
        names = list(VIEWS)
        return [names[int(i)] for i in self.state[np.asarray(slots, dtype=np.int64), VIEW]]

    @staticmethod
    def _squared_distances(reservoir: np.ndarray, sequence: np.ndarray) -> np.ndarray:
        """Squared distance of each series' sequence to each kept one (inf if not kept yet).

        Summed position by position: numpy reduces a short last axis slowly.
        """
        with np.errstate(over="ignore", invalid="ignore"):  # huge values: inf, far away
            gaps = reservoir - sequence[:, None, :].astype(np.float32)
            gaps *= gaps
            squared = gaps[:, :, 0].copy()
            for position in range(1, gaps.shape[2]):
                squared += gaps[:, :, position]
        return np.where(np.isnan(squared), np.inf, squared)

    def _reservoir(self, rows: np.ndarray) -> np.ndarray:
        """The kept sequences as a ``(series, kept, width)`` float32 view into ``rows``.

        They are stored as float32 pairs packed into the float64 table: half the state,
        and distances between normalised sequences need no more precision.
        """
        packed = rows[:, self._kept_at:].view(np.float32)
        reservoir = packed.reshape(len(rows), self.config.shape_kept, self.config.shape_width)
        assert not len(rows) or np.shares_memory(reservoir, rows), "a view, not a copy"
        return reservoir

    def _shape_law(self, rows: np.ndarray, strangeness: np.ndarray,
                   full: np.ndarray) -> np.ndarray:
        """Average the strangeness, judge it by its long-run law, then teach the law."""
        cfg = self.config
        rows[:, SHAPE_SHORT] += full * cfg.shape_short * (strangeness - rows[:, SHAPE_SHORT])
        rate = full * np.maximum(cfg.shape_long, 1.0 / (rows[:, SHAPE_LEARNED] + 1.0))
        log_p = _judge_by_law(rows, rows[:, SHAPE_SHORT], (SHAPE_MEAN, SHAPE_VAR), rate)
        rows[:, SHAPE_LEARNED] += full
        return log_p

    def _keep_sequence(self, rows: np.ndarray, sequence: np.ndarray,
                       reservoir: np.ndarray) -> None:
        """Keep every ``shape_stride``-th complete sequence, overwriting the oldest."""
        cfg = self.config
        count = rows[:, 0] + 1
        keep = (count % cfg.shape_stride == 0) & ~np.isnan(sequence[:, 0])
        at = np.flatnonzero(keep)
        place = (count[at] // cfg.shape_stride % cfg.shape_kept).astype(np.int64)
        reservoir[at, place] = sequence[at]  # a view: this writes the rows

    def _phase_law(self, rows: np.ndarray, z: np.ndarray, speaks: np.ndarray) -> np.ndarray:
        """Average the phase surprise, judge it by its long-run law, then teach the law.

        Until the view speaks its law learns faster, so it has settled when it does.
        """
        cfg = self.config
        rows[:, PHASE_SHORT] += cfg.phase_short * (z - rows[:, PHASE_SHORT])
        rate = np.where(speaks, cfg.long, max(cfg.long, PHASE_YOUNG_RATE))
        return _judge_by_law(rows, rows[:, PHASE_SHORT], (PHASE_MEAN, PHASE_VAR), rate)

    def _hold(self, rows: np.ndarray, score: np.ndarray, surprise: np.ndarray) -> np.ndarray:
        """Damp scores for a while after one fired, so one event reports once.

        ``surprise`` is the score before capping at 1; far beyond 1 it breaks the hold. A
        point view's alarm passes a hold another view started; a hold restored from a
        snapshot without its view (-1) holds every view. The hold does not run down while
        the view that started it still scores from :attr:`EnsembleConfig.fire`, up to
        :attr:`EnsembleConfig.hold_max` samples in all.
        """
        cfg = self.config
        view, held_by = rows[:, VIEW], rows[:, HOLD_VIEW]
        new_fault = np.isin(view, POINT_VIEWS) & (held_by >= 0) & (held_by != view)
        holding = (rows[:, HOLD] > 0) & ~new_fault & (surprise < cfg.hold_break)
        # The view that fired still scoring as high is the same event, not yet over.
        ongoing = holding & (view == held_by) & (score >= cfg.fire)
        rows[:, HELD_SCORE] = np.where(holding, score, 0.0)
        score = np.where(holding, score * cfg.damp, score)
        rows[:, HELD_FOR] += rows[:, HOLD] > 0
        left = np.where(ongoing, rows[:, HOLD], np.maximum(rows[:, HOLD] - 1, 0))
        rows[:, HOLD] = np.where(rows[:, HELD_FOR] >= cfg.hold_max, 0.0, left)

        fired = (score >= cfg.fire) & (rows[:, 0] >= self.warm_up)
        hold = np.maximum(cfg.hold, cfg.hold_share * rows[fired, 0])  # hold_max cuts it
        rows[fired, HOLD] = np.ceil(hold)
        rows[fired, HOLD_VIEW] = rows[fired, VIEW]
        rows[fired, HELD_FOR] = 0.0
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


def _judge_by_law(rows: np.ndarray, observed: np.ndarray, law: tuple[int, int],
                  rate: np.ndarray | float) -> np.ndarray:
    """Log tail probability of ``observed`` under a running normal law, which then learns it.

    ``law`` names the columns of the law's mean and variance.
    """
    mean, variance = law
    gap = observed - rows[:, mean]
    log_p = log_ndtr(-gap / (np.sqrt(rows[:, variance]) + 1e-3))
    rows[:, mean] += rate * gap
    rows[:, variance] += rate * (gap * gap - rows[:, variance])
    return log_p


def _shape_columns(config: EnsembleConfig) -> tuple[str, ...]:
    """The ensemble's columns: the fixed ones, the deciding view, the drift view's, the
    held view, how long it has been held and the latest score the hold damped, then the
    shape view's sequence and reservoir (their width depends on the configuration)."""
    sequence = tuple(f"shape_sequence_{i}" for i in range(config.shape_width))
    if config.shape_kept * config.shape_width % 2:
        raise ValueError("shape_kept x shape_width must be even: float32 values go in pairs")
    kept = tuple(f"shape_kept_{j}" for j in range(config.shape_kept * config.shape_width // 2))
    return (*_COLUMNS, "shape_short", "shape_mean", "shape_var", "shape_learned", "view",
            "drift_level", "drift_mean", "drift_var", "hold_view", "held_for", "held_score",
            *sequence, *kept)
