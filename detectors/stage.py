"""The detector stage: samples in, anomalies out, state kept across restarts.

The stage owns one :class:`~detectors.ensemble.Ensemble` whose rows are the series it
has seen, keyed by series id. A batch may hold several samples of one series; they are
stepped in time order, one round per occurrence. A score at or above ``threshold``
becomes an :class:`~tillwatch.anomaly.Anomaly` with the expected band around the
ensemble's running level. The project lead wires the stage to the stream and storage.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detectors.ensemble import DEV, LEVEL, Ensemble, EnsembleConfig
from tillwatch.anomaly import Anomaly
from tillwatch.sample import SampleBatch

BAND_WIDTH = 4.0  # robust deviations either side of the level


class DetectorStage:
    """Score batches of samples and publish the anomalous ones.

    Args:
        threshold: score from which a sample becomes an anomaly.
        config: ensemble tuning (the NAB-measured default when omitted).
    """

    def __init__(self, *, threshold: float = 0.5, config: EnsembleConfig | None = None) -> None:
        self.threshold = threshold
        self.ensemble = Ensemble(0, config)
        self._slots: dict[int, int] = {}

    def process(self, batch: SampleBatch) -> list[Anomaly]:
        """Score every sample of the batch (in time order per series); return anomalies."""
        if not len(batch):
            return []
        slots = self._slots_of(batch)
        order = np.lexsort((batch.ts, slots))
        rank = _occurrence(slots[order])
        anomalies: list[Anomaly] = []
        for round_ in range(int(rank.max()) + 1 if len(rank) else 0):
            picked = order[rank == round_]
            bands = self.ensemble.state[slots[picked]][:, [LEVEL, DEV]]
            scores = self.ensemble.step(slots[picked], batch.ts[picked], batch.value[picked])
            anomalies += self._verdicts(batch, picked, scores, bands)
        return anomalies

    def snapshot(self, path: Path) -> None:
        """Write series ids and state so a restarted worker resumes without warm-up."""
        ids = np.fromiter(self._slots, dtype=np.uint64, count=len(self._slots))
        with open(path, "wb") as handle:
            np.savez(handle, ids=ids, state=self.ensemble.state)

    def restore(self, path: Path) -> None:
        """Load a snapshot written by :meth:`snapshot`."""
        with np.load(path, allow_pickle=False) as saved:
            self.ensemble.state = saved["state"].copy()
            self._slots = {int(i): slot for slot, i in enumerate(saved["ids"].tolist())}

    def _slots_of(self, batch: SampleBatch) -> np.ndarray:
        """Slot of every sample, giving new series a fresh (cold) row."""
        per_series = np.empty(len(batch.series), dtype=np.int64)
        for ix, series in enumerate(batch.series):
            per_series[ix] = self._slots.setdefault(series.id, len(self._slots))
        self.ensemble.resize(len(self._slots))
        return per_series[batch.series_ix.astype(np.int64)]

    def _verdicts(self, batch: SampleBatch, picked: np.ndarray, scores: np.ndarray,
                  bands: np.ndarray) -> list[Anomaly]:
        out = []
        for i in np.flatnonzero(scores >= self.threshold).tolist():
            row = int(picked[i])
            series = batch.series[int(batch.series_ix[row])]
            level, dev = float(bands[i, 0]), float(bands[i, 1])
            observed = float(batch.value[row])
            lower, upper = level - BAND_WIDTH * dev, level + BAND_WIDTH * dev
            direction = "up" if observed > level else "down" if observed < level else "none"
            out.append(Anomaly(
                ts=float(batch.ts[row]), series_id=series.id, signal=series.signal,
                labels=dict(series.labels), score=float(scores[i]), observed=observed,
                expected=level, lower=lower, upper=upper, direction=direction,
                detector="ensemble",
                explanation=f"{series.signal} at {observed:g}, expected {lower:g}..{upper:g}",
            ))
        return out


def _occurrence(sorted_slots: np.ndarray) -> np.ndarray:
    """0 for a series' first sample in sorted order, 1 for its second, and so on."""
    if not len(sorted_slots):
        return sorted_slots
    starts = np.r_[True, sorted_slots[1:] != sorted_slots[:-1]]
    first = np.maximum.accumulate(np.where(starts, np.arange(len(sorted_slots)), 0))
    return np.arange(len(sorted_slots)) - first
