"""The detector stage: samples in, anomalies out, state kept across restarts.

Each series goes to one detector family, chosen by its signal (:func:`family_of`):

- order counts (``kpi.orders*``): :class:`~detectors.counts.PoissonCounts`, seasonal
  Poisson rates, since a low-volume store is judged on counts, not on a normal law;
- revenue (``kpi.revenue*``): the same count model, its learned dispersion absorbing
  the basket;
- other business KPIs (checkout latency and errors, stock delay):
  :class:`~detectors.seasonal.Seasonal`, the robust hour-of-day-type profile;
- everything else: the :class:`~detectors.ensemble.Ensemble`.

Signals with a known limit are judged by a rule instead (``rules``, first match wins,
see :mod:`detectors.rules`): threshold rules with hysteresis and minimum duration (backup
age, replication lag, certificate expiry) and SLO burn-rate rules (server error ratios).
With ``multivariate=True`` each service's series are also judged jointly by a
:class:`~detectors.forest.ServiceForest` (its anomalies carry ``detector="forest"`` and
the signal ``service.joint`` labelled with the service). A snapshot keeps each forest's
rows, not its model; a restore refits the forests from them, so they go on scoring at once.

KPI samples outside trading hours or inside a calendar event (``calendar``) are masked
before the seasonal families see them: neutral, and not learned. A batch may hold several
samples of one series; they are stepped in time order, one round per occurrence. A score
at or above ``threshold`` becomes an :class:`~tillwatch.anomaly.Anomaly` naming the
family that fired, the expected value and band, the observed value and the direction.
A rule that keeps firing, or an ensemble event that goes on under its hold, is reported
at its onset and then reminded of every ``reminder`` seconds (``Anomaly.extra`` marks
the reminders), so its incident stays open while it lasts; a dip below the threshold
shorter than ``reminder`` seconds does not end it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from detectors.base import DetectorError
from detectors.calendar import Calendar
from detectors.counts import PoissonCounts
from detectors.ensemble import DEV, LEVEL, VIEWS, Ensemble, EnsembleConfig
from detectors.forest import SNAPSHOT_KEYS, ServiceForest
from detectors.rules import DEFAULT_RULES, Rule, rule_for
from detectors.seasonal import Seasonal
from detectors.table import LAST_TS, TableDetector
from tillwatch.anomaly import REMINDER, Anomaly, Direction
from tillwatch.sample import SampleBatch, Series

log = logging.getLogger(__name__)

BAND_WIDTH = 4.0  # deviations either side of the expected value
FAMILIES = ("ensemble", "seasonal", "counts", "revenue")
# Seconds between reports of an event that goes on: well inside the incidents' window
# (300 s) even when samples come a few minutes apart.
REMINDER_EVERY = 120.0
SEASONAL_FAMILIES = ("seasonal", "counts", "revenue")


def family_of(signal: str) -> str:
    """The detector family that judges a signal."""
    if signal.startswith("kpi.orders"):
        return "counts"
    if signal.startswith("kpi.revenue"):
        return "revenue"
    if signal.startswith("kpi."):
        return "seasonal"
    return "ensemble"


class DetectorStage:
    """Score batches of samples and publish the anomalous ones.

    Args:
        threshold: score from which a sample becomes an anomaly.
        config: ensemble tuning; when omitted, the NAB-measured default with its hold
            starting at ``threshold`` (a hold follows a reported anomaly).
        calendar: trading hours and calendar events masking business KPIs.
        utc_offset_hours: local time of the shops, for the seasonal profiles' hours.
        rules: rules for signals with known limits (:data:`DEFAULT_RULES` when
            omitted; pass ``()`` for none).
        multivariate: also judge each service's series jointly with an IsolationForest.
        reminder: seconds between two anomalies of an event that goes on (a rule that
            keeps firing, an ensemble event whose view still sees it): it is reported at
            onset, then at this pace while it lasts, which keeps its finding active in
            its incident (the incidents' window is 300 s) without a row per sample.
    """

    def __init__(self, *, threshold: float = 0.5, config: EnsembleConfig | None = None,
                 calendar: Calendar | None = None, utc_offset_hours: float = 0.0,
                 rules: Sequence[Rule] | None = None, multivariate: bool = False,
                 reminder: float = REMINDER_EVERY) -> None:
        self.threshold, self.reminder = threshold, reminder
        # Time of the last anomaly reported per (family, slot) while its event goes on,
        # and since when an event going on has been below the threshold (a dip).
        self._reported: dict[tuple[str, int], float] = {}
        self._dipped: dict[tuple[str, int], float] = {}
        self.rules = tuple(DEFAULT_RULES if rules is None else rules)
        self.multivariate = multivariate
        self.calendar = calendar or Calendar()
        self.ensemble = Ensemble(0, config or EnsembleConfig(fire=threshold))
        self.detectors: dict[str, TableDetector] = {
            "ensemble": self.ensemble,
            "seasonal": Seasonal(0, utc_offset_hours=utc_offset_hours),
            # People are paged on these: a new series' first day is judged wider and
            # verdicts need 8 decades of surprise (measured on a simulated week).
            "counts": PoissonCounts(0, utc_offset_hours=utc_offset_hours, decades=8.0,
                                    widen_alone=True),
            # Money is a count of orders times a basket: the learned dispersion
            # absorbs the basket, so the same count model judges it.
            "revenue": PoissonCounts(0, utc_offset_hours=utc_offset_hours, decades=8.0,
                                     widen_alone=True),
        }
        self.families = (*FAMILIES, *(f"rule{i}" for i in range(len(self.rules))))
        for i, rule in enumerate(self.rules):
            self.detectors[f"rule{i}"] = rule.build(0)
        self._slots: dict[str, dict[int, int]] = {name: {} for name in self.families}
        self._family_cache: dict[int, str] = {}
        self._forests: dict[str, tuple[list[int], ServiceForest]] = {}

    def family_of(self, series: Series) -> str:
        """The family judging a series: its rule's (``rule<i>``) if one matches."""
        family = self._family_cache.get(series.id)
        if family is None:
            index = rule_for(series.signal, series.labels, self.rules)
            family = family_of(series.signal) if index is None else f"rule{index}"
            self._family_cache[series.id] = family
        return family

    def process(self, batch: SampleBatch) -> list[Anomaly]:
        """Score every sample of the batch (in time order per series); return anomalies."""
        if not len(batch):
            return []
        families = np.array([self.family_of(s) for s in batch.series])
        of_sample = families[batch.series_ix.astype(np.int64)]
        value = self._masked_values(batch)
        anomalies: list[Anomaly] = []
        for family in self.families:
            rows = np.flatnonzero(of_sample == family)
            if len(rows):
                anomalies += self._process_family(family, batch, rows, value)
        if self.multivariate:
            anomalies += self._process_forests(batch)
        return sorted(anomalies, key=lambda a: (a.ts, a.series_id))

    def settle(self) -> None:
        """Wait for the service forests' background refits (for replays and tests)."""
        for _, forest in self._forests.values():
            forest.wait()

    def snapshot(self, path: Path) -> None:
        """Write series ids and state so a restarted worker resumes without warm-up."""
        arrays: dict[str, Any] = {}  # numpy's savez stub mistypes **arrays as flags
        for family in self.families:
            slots = self._slots[family]
            arrays[f"{family}_ids"] = np.fromiter(slots, dtype=np.uint64, count=len(slots))
            arrays[f"{family}_state"] = self.detectors[family].state
            arrays[f"{family}_columns"] = np.array(self.detectors[family].columns, dtype=str)
        for i, rule in enumerate(self.rules):
            arrays[f"rule{i}_rule"] = np.array([repr(rule)])
        arrays.update(self._reported_arrays())
        arrays.update(self._forest_arrays())
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)

    def restore(self, path: Path) -> None:
        """Load a snapshot written by :meth:`snapshot` (or by the ensemble-only stage)."""
        restored: set[str] = set()
        with np.load(path, allow_pickle=False) as saved:
            for family in self.families:
                if not self._same_rule(family, saved):
                    continue
                prefix = f"{family}_" if f"{family}_ids" in saved else ""
                if family == "ensemble" and "ids" in saved:
                    prefix = ""
                elif not prefix:
                    continue
                if not self._restore_table(family, saved, prefix):
                    continue
                self._slots[family] = {
                    int(i): slot for slot, i in enumerate(saved[f"{prefix}ids"].tolist())
                }
                restored.add(family)
            self._restore_reported(saved, restored)
            if self.multivariate:
                self._restore_forests(saved)

    def _reported_arrays(self) -> dict[str, np.ndarray]:
        """The events going on and when each was last reported, so a restarted stage
        keeps reminding of them at the same pace."""
        keys = list(self._reported)
        return {
            "reported_family": np.array([family for family, _ in keys], dtype=str),
            "reported_slot": np.array([slot for _, slot in keys], dtype=np.int64),
            "reported_ts": np.array(list(self._reported.values()), dtype=np.float64),
            "reported_dipped": np.array([self._dipped.get(key, np.nan) for key in keys],
                                        dtype=np.float64),
        }

    def _restore_reported(self, saved: np.lib.npyio.NpzFile, restored: set[str]) -> None:
        """Take the saved events of the families whose state was restored: another
        family's slots would name other series, or a rule's state starts afresh."""
        if "reported_family" not in saved:
            return  # written before the events were saved: reminders resume at onsets
        keys = [(family, int(slot)) for family, slot in
                zip(saved["reported_family"].tolist(), saved["reported_slot"].tolist(),
                    strict=True)]
        # Written before dips were saved (2026-12-04): every event was above the threshold.
        dipped = (saved["reported_dipped"].tolist() if "reported_dipped" in saved
                  else [math.nan] * len(keys))
        self._reported, self._dipped = {}, {}
        for key, ts, since in zip(keys, saved["reported_ts"].tolist(), dipped, strict=True):
            if key[0] not in restored:
                continue
            self._reported[key] = float(ts)
            if not math.isnan(since):
                self._dipped[key] = float(since)

    def _forest_arrays(self) -> dict[str, np.ndarray]:
        """Each service's series ids and forest rows, under ``forest<i>_`` keys."""
        services = sorted(self._forests)
        arrays = {"forest_services": np.array(services, dtype=str)}
        for i, service in enumerate(services):
            known, forest = self._forests[service]
            arrays[f"forest{i}_ids"] = np.array(known, dtype=np.uint64)
            arrays.update({f"forest{i}_{key}": value
                           for key, value in forest.snapshot().items()})
        return arrays

    def _restore_forests(self, saved: np.lib.npyio.NpzFile) -> None:
        """Refit each saved service forest; a snapshot without forests starts them afresh."""
        self._forests = {}
        if "forest_services" not in saved:
            log.info("detector snapshot: no service forests in it (an older snapshot); "
                     "they start afresh, neutral for a day")
            return
        for i, service in enumerate(saved["forest_services"].tolist()):
            known = [int(series_id) for series_id in saved[f"forest{i}_ids"].tolist()]
            forest = ServiceForest(len(known))
            try:
                forest.restore({key: saved[f"forest{i}_{key}"] for key in SNAPSHOT_KEYS
                                if f"forest{i}_{key}" in saved})
            except DetectorError as error:
                log.warning("detector snapshot: %s; the forest of %s starts afresh",
                            error, service)
                continue
            self._forests[service] = (known, forest)

    def _restore_table(self, family: str, saved: np.lib.npyio.NpzFile, prefix: str) -> bool:
        """Load a family's saved table; False when it cannot be read (it starts afresh).

        A table saved with its column names is matched by name, so a version that adds
        a column keeps the rest; an older snapshot without names must have the same
        number of columns, or it would be misread.
        """
        detector, state = self.detectors[family], saved[f"{prefix}state"]
        if f"{prefix}columns" in saved:
            fresh = detector.adopt(state, saved[f"{prefix}columns"].tolist())
            if fresh:
                log.info("detector snapshot: %s columns new in this version start afresh: %s",
                         family, ", ".join(fresh))
            if fresh is not None:
                return True
        elif state.ndim == 2 and state.shape[1] == len(detector.columns):
            detector.state = state.copy()
            return True
        log.warning("detector snapshot: %s state has shape %s, expected %d columns; "
                    "starting that family afresh", family, state.shape, len(detector.columns))
        return False

    def _same_rule(self, family: str, saved: np.lib.npyio.NpzFile) -> bool:
        """Whether a rule family's saved state belongs to the same rule (always for others).

        A changed rule table starts its rules afresh rather than misread another rule's
        state.
        """
        if not family.startswith("rule"):
            return True
        key = f"{family}_rule"
        return key in saved and str(saved[key][0]) == repr(self.rules[int(family[4:])])

    def _masked_values(self, batch: SampleBatch) -> np.ndarray:
        """Sample values, NaN where the calendar says a KPI is not to be judged."""
        value = batch.value.astype(float, copy=True)
        if not (self.calendar.hours or self.calendar.events):
            return value
        series_ix = batch.series_ix.astype(np.int64)
        for ix, series in enumerate(batch.series):
            if self.family_of(series) in SEASONAL_FAMILIES:
                rows = np.flatnonzero(series_ix == ix)
                value[rows[self.calendar.masked(batch.ts[rows], series.labels)]] = np.nan
        return value

    def _process_family(self, family: str, batch: SampleBatch, rows: np.ndarray,
                        value: np.ndarray) -> list[Anomaly]:
        slots = self._slots_of(family, batch, rows)
        order = rows[np.lexsort((batch.ts[rows], slots))]
        slot_of = dict(zip(rows.tolist(), slots.tolist(), strict=True))
        ordered_slots = np.array([slot_of[r] for r in order.tolist()], dtype=np.int64)
        rank = _occurrence(ordered_slots)
        anomalies: list[Anomaly] = []
        for round_ in range(int(rank.max()) + 1):
            picked = order[rank == round_]
            picked_slots = ordered_slots[rank == round_]
            bands = self._bands(family, picked_slots, batch.ts[picked])
            scores = self.detectors[family].step(picked_slots, batch.ts[picked], value[picked])
            anomalies += self._verdicts(family, batch, picked, picked_slots, scores, bands)
        return anomalies

    def _bands(self, family: str, slots: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """``(expected, lower, upper)`` per sample, from the state before the sample."""
        detector = self.detectors[family]
        if family.startswith("rule"):
            return self.rules[int(family[4:])].band(len(slots))
        if family == "ensemble":
            level, dev = detector.state[slots][:, LEVEL], detector.state[slots][:, DEV]
            return np.column_stack([level, level - BAND_WIDTH * dev, level + BAND_WIDTH * dev])
        profiled = cast(Seasonal | PoissonCounts, detector)
        return np.column_stack(profiled.band(slots, ts, BAND_WIDTH))

    def _slots_of(self, family: str, batch: SampleBatch, rows: np.ndarray) -> np.ndarray:
        """Slot of each of the family's samples, giving new series a fresh (cold) row."""
        slots = self._slots[family]
        series_ix = batch.series_ix[rows].astype(np.int64)
        per_series = {}
        for ix in np.unique(series_ix).tolist():
            per_series[ix] = slots.setdefault(batch.series[ix].id, len(slots))
        self.detectors[family].resize(len(slots))
        return np.array([per_series[ix] for ix in series_ix.tolist()], dtype=np.int64)

    def _verdicts(self, family: str, batch: SampleBatch, picked: np.ndarray,
                  picked_slots: np.ndarray, scores: np.ndarray, bands: np.ndarray
                  ) -> list[Anomaly]:
        if family.startswith("rule"):
            return self._rule_verdicts(family, batch, picked, picked_slots, scores, bands)
        reports, scores = self._reports(family, batch, picked, picked_slots, scores)
        # A count model judges windows, not the sample: its direction is the side of the
        # window that scored highest (a surplus window may end on a minute without a sale).
        side = getattr(self.detectors[family], "side", None)
        sides = side(picked_slots) if side else None
        # Only the reported slots: each of them has just been scored, so its deciding
        # view is this sample's (a late sample's slot may still hold a restored, older one).
        reasons = dict(zip(reports, self._reasons(family, picked_slots[list(reports)]),
                           strict=True))
        out = []
        for i, reminder in sorted(reports.items()):
            row = int(picked[i])
            series = batch.series[int(batch.series_ix[row])]
            expected, lower, upper = (float(v) for v in bands[i])
            observed = float(batch.value[row])
            direction = _direction(observed, expected, sides[i] if sides is not None
                                   else None)
            still = ", still going on" if reminder else ""
            out.append(Anomaly(
                ts=float(batch.ts[row]), series_id=series.id, signal=series.signal,
                labels=dict(series.labels), score=float(scores[i]), observed=observed,
                expected=expected, lower=lower, upper=upper, direction=direction,
                detector=family,
                explanation=(f"{family}{reasons[i]}{still}: {series.signal} {direction} at "
                             f"{observed:g}, expected {expected:g} ({lower:g}..{upper:g})"),
                extra={REMINDER: 1.0} if reminder else {},
            ))
        return out

    def _reports(self, family: str, batch: SampleBatch, picked: np.ndarray,
                 picked_slots: np.ndarray, scores: np.ndarray
                 ) -> tuple[dict[int, bool], np.ndarray]:
        """The samples a learning family reports, each marked True if a reminder, and the
        scores to report.

        The seasonal and count families have no hold: every sample from the threshold on
        is reported. The ensemble's onsets are, then reminders while the event goes on,
        each with the score its hold damped.
        """
        onsets = np.flatnonzero(scores >= self.threshold).tolist()
        if family != "ensemble":
            return dict.fromkeys(onsets, False), scores
        # The score the hold damped: from the threshold on, the reported event goes on.
        unheld = np.maximum(scores, self.ensemble.held_score(picked_slots))
        going_on = unheld >= self.threshold
        return self._paced(family, batch, picked, picked_slots, set(onsets), going_on), unheld

    def _reasons(self, family: str, slots: np.ndarray) -> list[str]:
        """For the ensemble, which of its views decided each score and what that means."""
        if family != "ensemble":
            return [""] * len(slots)
        views = self.ensemble.deciding_view(slots)
        return [f" ({view}: {VIEWS[view]})" for view in views]

    def _rule_verdicts(self, family: str, batch: SampleBatch, picked: np.ndarray,
                       picked_slots: np.ndarray, scores: np.ndarray, bands: np.ndarray
                       ) -> list[Anomaly]:
        """Anomalies of a firing rule, explained by the rule and its limit."""
        rule, detector = self.rules[int(family[4:])], self.detectors[family]
        firing = scores >= self.threshold
        onsets = {i for i in np.flatnonzero(firing).tolist()
                  if (family, int(picked_slots[i])) not in self._reported}
        out = []
        for i, reminder in self._paced(family, batch, picked, picked_slots, onsets,
                                       firing).items():
            row = int(picked[i])
            series = batch.series[int(batch.series_ix[row])]
            expected, lower, upper = (float(v) for v in bands[i])
            observed = float(batch.value[row])
            out.append(Anomaly(
                ts=float(batch.ts[row]), series_id=series.id, signal=series.signal,
                labels=dict(series.labels), score=float(scores[i]), observed=observed,
                expected=expected, lower=lower, upper=upper, direction=rule.direction(),
                detector=rule.kind,
                explanation=rule.explain(series.signal, observed, cast(Any, detector),
                                         int(picked_slots[i])),
                extra={REMINDER: 1.0} if reminder else {},
            ))
        return out

    def _paced(self, family: str, batch: SampleBatch, picked: np.ndarray,
               picked_slots: np.ndarray, onsets: set[int], going_on: np.ndarray
               ) -> dict[int, bool]:
        """Which samples to report: every onset, then one per ``reminder`` seconds while
        the event goes on.

        A dip below the threshold shorter than ``reminder`` seconds does not end the
        event: an ensemble event is often decided first by a point view (a new maximum)
        and a few samples later by the level view, its held score below the threshold in
        between. Once an event has stayed below for ``reminder`` seconds, it is over and
        only a new onset is reported: what its hold sees later stays muted, so a
        reminder never revives an incident that has resolved (between two reports of
        an event lie less than twice ``reminder``, inside the incidents' window). A
        sample the detector did not learn (a late one) neither continues nor ends it.

        Returns:
            The index of each sample to report, and whether it is a reminder.
        """
        learned = self.detectors[family].state[picked_slots, LAST_TS] == batch.ts[picked]
        reports = {}
        for i, (row, slot) in enumerate(zip(picked.tolist(), picked_slots.tolist(),
                                            strict=True)):
            key, ts = (family, int(slot)), float(batch.ts[row])
            if i in onsets:
                self._reported[key] = ts
                self._dipped.pop(key, None)
                reports[i] = False
            elif not learned[i] or key not in self._reported:
                continue
            elif not going_on[i]:
                if ts - self._dipped.setdefault(key, ts) >= self.reminder:
                    del self._reported[key], self._dipped[key]  # over: next is an onset
            else:
                self._dipped.pop(key, None)
                if ts - self._reported[key] >= self.reminder:
                    self._reported[key] = ts
                    reports[i] = True
        return reports

    def _process_forests(self, batch: SampleBatch) -> list[Anomaly]:
        """Judge each service's series jointly, one row per timestamp of the batch."""
        series_ix = batch.series_ix.astype(np.int64)
        by_service: dict[str, list[int]] = {}
        for ix, series in enumerate(batch.series):
            # A rule's signal has a known limit and is often a count-up or count-down
            # (ages, days left): forever novel to a forest, so left to its rule.
            if self.family_of(series).startswith("rule"):
                continue
            service = series.labels.get("service") or series.signal.split(".", 1)[0]
            by_service.setdefault(service, []).append(ix)
        anomalies = []
        for service, members in sorted(by_service.items()):
            rows = np.flatnonzero(np.isin(series_ix, members))
            anomalies += self._judge_service(service, batch, rows)
        return anomalies

    def _judge_service(self, service: str, batch: SampleBatch, rows: np.ndarray
                       ) -> list[Anomaly]:
        ids = [batch.series[int(batch.series_ix[r])].id for r in rows.tolist()]
        known, forest = self._forests.get(service, ([], None))
        # A new series widens the service's rows: start its forest again.
        if forest is None or not set(ids) <= set(known):
            known = sorted(set(known) | set(ids))
            forest = ServiceForest(len(known))
            self._forests[service] = (known, forest)
        column = {series_id: i for i, series_id in enumerate(known)}

        stamps, at = np.unique(batch.ts[rows], return_inverse=True)
        table = np.full((len(stamps), len(known)), np.nan)
        table[at, [column[i] for i in ids]] = batch.value[rows]
        scores = forest.step_many(table)
        joint = Series.of("service.joint", {"service": service})
        return [Anomaly(
            ts=float(stamps[k]), series_id=joint.id, signal=joint.signal,
            labels=dict(joint.labels), score=float(scores[k]), observed=float(scores[k]),
            expected=0.0, lower=0.0, upper=self.threshold, direction="up",
            detector="forest",
            explanation=(f"forest: the {len(known)} series of {service} are unusual "
                         f"together (isolation score {scores[k]:.2f})"),
        ) for k in np.flatnonzero(scores >= self.threshold).tolist()]


def _direction(observed: float, expected: float, side: float | None) -> Direction:
    """The side of a count model's highest-scoring window when it has one, else the
    sample against the expected value."""
    if side:
        return "up" if side > 0 else "down"
    if observed > expected:
        return "up"
    if observed < expected:
        return "down"
    return "none"


def _occurrence(sorted_slots: np.ndarray) -> np.ndarray:
    """0 for a series' first sample in sorted order, 1 for its second, and so on."""
    if not len(sorted_slots):
        return sorted_slots
    starts = np.r_[True, sorted_slots[1:] != sorted_slots[:-1]]
    first = np.maximum.accumulate(np.where(starts, np.arange(len(sorted_slots)), 0))
    return np.arange(len(sorted_slots)) - first
