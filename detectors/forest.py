"""Multivariate view of one service: an IsolationForest over all its series at once.

Some trouble shows only jointly: a request rate that is normal, a latency that is normal,
but not the two together. Each timestamp becomes one row, the service's series its
columns (a series without a sample at that time repeats its last value). Rows are
standardised and rotated onto their principal axes before the forest sees them: the
forest cuts along axes, and a point off the diagonal of two correlated series is
extreme only along the minor principal axis, where a few cuts isolate it. The forest is
refitted in a background thread every ``refit_every`` rows on the last ``window`` rows;
rows are scored online by the last fitted model, neutral until a model fitted on
``warm_up`` rows is there.

Two views, the larger wins:

- *isolation*, calibrated on the rows the model was fitted on: scikit-learn's anomaly
  score ``s`` (about 0.5 for ordinary rows, towards 1 for isolated ones) maps to half its
  rank among the training rows' scores, and beyond the highest of them to 0.5 .. 1 by how
  far it goes towards 1. The raw ``s`` of ordinary rows varies a lot between services;
  the rank does not.
- *range*: how far the row leaves the training rows' range along any principal axis, in
  that axis' standard deviations, 0.5 at three. A forest cannot see this: its cuts lie
  within the training range, so a row far outside it lands in the same leaf as the most
  extreme training row and scores no higher.

So 0.5 or more means "more isolated than anything in the window, or well outside it".
State: the window of rows (bounded), the rows of the last fit and the fitted transform,
forest and calibration. :meth:`ServiceForest.snapshot` saves the rows only, as plain
arrays (a pickled model is code, and a snapshot holds data); :meth:`ServiceForest.restore`
refits from them in the caller with the same seed, so it scores as before the restart.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from detectors.base import NEUTRAL_SCORE, DetectorError

log = logging.getLogger(__name__)

RANGE_UNITS = 6.0  # standard deviations beyond the training range that score 1
SNAPSHOT_KEYS = ("training", "recent", "last", "since_fit")


@dataclass(frozen=True, slots=True)
class _Fit:
    """One refit: the rotation, the forest and what calibrates their scores."""

    axes: Pipeline
    forest: IsolationForest
    known: np.ndarray  # training rows' anomaly scores, sorted
    low: np.ndarray  # training range along each principal axis
    high: np.ndarray
    spread: np.ndarray  # standard deviation along each axis
    training: np.ndarray  # the rows fitted on: a snapshot saves them to refit this model

    def score(self, rows: np.ndarray) -> np.ndarray:
        """Each row's score: the larger of the isolation and range views."""
        rotated = self.axes.transform(rows)
        anomaly = -self.forest.score_samples(rotated)
        ceiling = self.known[-1]
        rank = np.searchsorted(self.known, anomaly, side="left") / len(self.known)
        beyond = np.clip((anomaly - ceiling) / max(1.0 - ceiling, 1e-9), 0.0, 1.0)
        isolation = np.where(anomaly > ceiling, 0.5 + 0.5 * beyond, 0.5 * rank)
        outside = np.maximum(rotated - self.high, self.low - rotated) / self.spread
        return np.maximum(isolation, np.clip(outside.max(axis=1) / RANGE_UNITS, 0.0, 1.0))


class ServiceForest:
    """Online scoring of one service's joint state with a periodically refitted forest.

    Args:
        n_series: series (columns) of the service.
        window: rows kept for refitting.
        refit_every: rows between refits (the first fit happens after that many rows).
        n_estimators: trees per forest.
        random_state: seed of every fit, so runs repeat.
        background: refit in a thread (True) or in the caller (False, for replay).
        warm_up: rows the model must have been fitted on before it scores (a day of
            one-minute rows by default: a forest fitted on the night finds the whole
            morning isolated).
    """

    def __init__(self, n_series: int, *, window: int = 2048, refit_every: int = 256,
                 n_estimators: int = 50, random_state: int = 0,
                 background: bool = True, warm_up: int = 1440) -> None:
        self.n_series, self.window, self.refit_every = n_series, window, refit_every
        self.warm_up = warm_up
        self.n_estimators, self.random_state = n_estimators, random_state
        self.background = background
        self._rows: deque[np.ndarray] = deque(maxlen=window)
        self._last = np.full(n_series, np.nan)
        self._since_fit = 0
        self._model: _Fit | None = None
        self._lock = threading.Lock()
        self._fitting: threading.Thread | None = None

    @property
    def fitted(self) -> bool:
        """Whether a model is available to score with."""
        return self._model is not None

    def step(self, row: np.ndarray) -> float:
        """Score one timestamp's values (NaN: no sample, repeat the last), then learn it.

        Args:
            row: one value per series of the service.

        Returns:
            The row's score in [0, 1]; neutral until the first fit and while a series
            has never had a value.

        Raises:
            DetectorError: when the row does not hold one value per series.
        """
        row = np.asarray(row, dtype=float)
        if row.shape != (self.n_series,):
            raise DetectorError(
                f"service forest: expected one value per series ({self.n_series}), got "
                f"shape {row.shape}; pass the service's series in a fixed order"
            )
        return float(self.step_many(row[None, :])[0])

    def step_many(self, rows: np.ndarray) -> np.ndarray:
        """Score, then learn, consecutive timestamps' rows in one call.

        All rows are scored with the model fitted before the call (one call into
        scikit-learn instead of one per row, which is what makes this affordable); they
        are learned in order, so a refit may start during the call.

        Args:
            rows: ``(timestamps, series)`` values, NaN where a series has no sample.

        Returns:
            One score per row in [0, 1].

        Raises:
            DetectorError: when the rows do not hold one value per series.
        """
        rows = np.asarray(rows, dtype=float)
        if rows.ndim != 2 or rows.shape[1] != self.n_series:
            raise DetectorError(
                f"service forest: expected rows of one value per series ({self.n_series}),"
                f" got shape {rows.shape}; pass the service's series in a fixed order"
            )
        filled = self._forward_fill(rows)
        scores = np.full(len(rows), NEUTRAL_SCORE)
        complete = ~np.isnan(filled).any(axis=1)
        scores[complete] = self._score_rows(filled[complete])
        for row in filled[complete]:
            self._learn(row)
        return scores

    def wait(self) -> None:
        """Block until a refit in progress has finished."""
        fitting = self._fitting
        if fitting is not None:
            fitting.join()

    def snapshot(self) -> dict[str, np.ndarray]:
        """The forest's state as plain arrays for an ``.npz`` file; no model is pickled.

        Waits for a refit in progress first, so the saved rows are those of the model in
        use.

        Returns:
            ``training``: the rows of the last fit (none before it); ``recent``: the
            rows learned since, at most a window of them; ``last``: each series' last
            value, for the forward fill; ``since_fit``: rows learned since the fit.
        """
        self.wait()
        with self._lock:
            model = self._model
        training = model.training if model else np.empty((0, self.n_series))
        rows = list(self._rows)
        recent = rows[len(rows) - min(self._since_fit, len(rows)):]
        return {
            "training": training,
            "recent": np.array(recent).reshape(-1, self.n_series),
            "last": self._last.copy(),
            "since_fit": np.array([self._since_fit], dtype=np.int64),
        }

    def restore(self, saved: Mapping[str, np.ndarray]) -> None:
        """Resume from :meth:`snapshot`'s arrays, refitting in the caller.

        The refit uses this forest's own settings; with the saved forest's settings and
        seed it is the same model, so rows score as they would have without the restart.

        Args:
            saved: the arrays :meth:`snapshot` returned, read back.

        Raises:
            DetectorError: when an array is missing or holds another number of series.
        """
        self._check_snapshot(saved)
        self.wait()
        training = np.asarray(saved["training"], dtype=float)
        history = np.concatenate([training, np.asarray(saved["recent"], dtype=float)])
        self._rows = deque(history[len(history) - min(self.window, len(history)):],
                           maxlen=self.window)
        self._last = np.asarray(saved["last"], dtype=float).copy()
        self._since_fit = int(saved["since_fit"][0])
        model = self._fit_model(training) if len(training) else None
        with self._lock:
            self._model = model

    def _check_snapshot(self, saved: Mapping[str, np.ndarray]) -> None:
        missing = [key for key in SNAPSHOT_KEYS if key not in saved]
        if missing:
            raise DetectorError(f"service forest snapshot: no {', '.join(missing)} array; "
                                "write it with ServiceForest.snapshot")
        shapes = [saved[key].shape for key in ("training", "recent")]
        if any(len(shape) != 2 or shape[1] != self.n_series for shape in shapes) or (
                saved["last"].shape != (self.n_series,)):
            raise DetectorError(
                f"service forest snapshot: rows of shapes {shapes} and last values of "
                f"shape {saved['last'].shape}, expected {self.n_series} series; a "
                "snapshot of another service or version"
            )

    def _forward_fill(self, rows: np.ndarray) -> np.ndarray:
        """Each NaN replaced by its series' last value (NaN while it never had one)."""
        filled = np.empty_like(rows)
        for i, row in enumerate(rows):
            self._last = np.where(np.isnan(row), self._last, row)
            filled[i] = self._last
        return filled

    def _score_rows(self, rows: np.ndarray) -> np.ndarray:
        with self._lock:
            model = self._model
        if model is None or len(model.known) < self.warm_up or not len(rows):
            return np.full(len(rows), NEUTRAL_SCORE)
        return model.score(rows)

    def _learn(self, row: np.ndarray) -> None:
        self._rows.append(row)
        self._since_fit += 1
        busy = self._fitting is not None and self._fitting.is_alive()
        if self._since_fit < self.refit_every or busy:
            return
        self._since_fit = 0
        training = np.array(self._rows)
        if not self.background:
            self._fit(training)
            return
        self._fitting = threading.Thread(target=self._fit, args=(training,),
                                         name="service-forest-fit", daemon=True)
        self._fitting.start()

    def _fit(self, training: np.ndarray) -> None:
        model = self._fit_model(training)
        with self._lock:
            self._model = model
        log.debug("service forest refitted on %s rows", len(training))

    def _fit_model(self, training: np.ndarray) -> _Fit:
        axes = make_pipeline(StandardScaler(), PCA(random_state=self.random_state))
        # A window where nothing moved has no variance to share out among the axes:
        # PCA's explained-variance ratios (unused here) divide by zero.
        with np.errstate(invalid="ignore", divide="ignore"):
            rotated = axes.fit_transform(training)
        forest = IsolationForest(n_estimators=self.n_estimators,
                                 random_state=self.random_state).fit(rotated)
        # A constant axis (a series that never moved) gets a floor, not a zero spread.
        spread = np.maximum(rotated.std(axis=0), 1e-6)
        return _Fit(axes, forest, np.sort(-forest.score_samples(rotated)),
                    rotated.min(axis=0), rotated.max(axis=0), spread, training)
