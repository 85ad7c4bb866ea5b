"""The detector contract: learn and score one sample at a time, or many series at once.

A detector turns samples into scores in [0, 1], high meaning anomalous; deciding what
score is worth an alert belongs to a threshold (see ``alerts/``), not to the detector.
Scores are causal: the score of a sample depends only on it and the samples before it.

Two shapes, one meaning:

- :class:`Detector` is river-like: ``score_one`` then ``learn_one``, for one series.
- :class:`BatchDetector` keeps every series' state in one numpy table (a row per series,
  a fixed number of columns, so state stays bounded) and advances many series at once
  with ``step``: one sample per series per call, scored then learned.

Warm-up is explicit: until a series has learned ``warm_up`` samples its score is
:data:`NEUTRAL_SCORE`. A missing value (NaN) or a sample not newer than the series'
last one scores neutral and leaves the state untouched.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from tillwatch.errors import TillwatchError

NEUTRAL_SCORE = 0.0


class DetectorError(TillwatchError):
    """A detector was used outside its contract (bad shapes, unknown series slot)."""

    code = "detector_misuse"


@runtime_checkable
class Detector(Protocol):
    """One series, one sample at a time."""

    warm_up: int

    def score_one(self, ts: float, value: float) -> float:
        """Score a sample against what was learned so far, without learning it."""

    def learn_one(self, ts: float, value: float) -> None:
        """Fold a sample into the state."""


@runtime_checkable
class BatchDetector(Protocol):
    """Many series, one sample per series per step, state in a numpy table."""

    warm_up: int
    state: np.ndarray

    def step(self, slots: np.ndarray, ts: np.ndarray, value: np.ndarray) -> np.ndarray:
        """Score then learn one sample for each series slot; return the scores."""


def check_step(slots: np.ndarray, ts: np.ndarray, value: np.ndarray, n_slots: int) -> None:
    """Raise :class:`DetectorError` unless a step's arrays line up and slots are unique.

    Args:
        slots: series slot of each sample (int).
        ts: sample times, seconds.
        value: sample values; NaN marks a missing sample.
        n_slots: slots the detector holds.

    Raises:
        DetectorError: when the arrays differ in length, a slot is out of range or a
            slot appears twice in one step.
    """
    if not len(slots) == len(ts) == len(value):
        raise DetectorError(
            f"detector step: slots, ts and value must have one entry per sample; got "
            f"{len(slots)}, {len(ts)} and {len(value)}; pass aligned arrays"
        )
    if len(slots) and (slots.min() < 0 or slots.max() >= n_slots):
        raise DetectorError(
            f"detector step: series slot out of range 0..{n_slots - 1}; grow the detector "
            "with resize() before stepping new series"
        )
    if len(np.unique(slots)) != len(slots):
        raise DetectorError(
            "detector step: a series appears twice in one step; split the batch so each "
            "step holds at most one sample per series"
        )


class OneSeries:
    """Adapt a :class:`BatchDetector` with one slot to the :class:`Detector` shape."""

    def __init__(self, batch: BatchDetector) -> None:
        self._batch = batch
        self.warm_up = batch.warm_up

    def score_one(self, ts: float, value: float) -> float:
        """Score without learning: step a copy of the state and throw the copy away."""
        saved = self._batch.state.copy()
        score = self.step_one(ts, value)
        self._batch.state[...] = saved
        return score

    def learn_one(self, ts: float, value: float) -> None:
        """Learn the sample (its score is discarded)."""
        self.step_one(ts, value)

    def step_one(self, ts: float, value: float) -> float:
        """Score then learn, in one call: the cheap path."""
        slot = np.zeros(1, dtype=np.int64)
        scores = self._batch.step(slot, np.array([ts], float), np.array([value], float))
        return float(scores[0])
