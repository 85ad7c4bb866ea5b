"""Shared plumbing for batch detectors whose state is one float64 row per series.

Subclasses name their columns and implement :meth:`TableDetector._advance`, which sees
only the rows of valid samples (finite, newer than the series' last sample) and returns
their scores. Warm-up, missing and out-of-order samples, growth and snapshots live here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from detectors.base import NEUTRAL_SCORE, DetectorError, check_step

SEEN = 0  # samples learned
LAST_TS = 1  # time of the newest sample learned


class TableDetector:
    """A batch detector over a ``(slots, columns)`` float64 state table.

    Args:
        n_slots: series slots to allocate now (grow later with :meth:`resize`).
        warm_up: samples a series must have learned before it scores; until then the
            score is :data:`NEUTRAL_SCORE`.
    """

    columns: tuple[str, ...] = ("seen", "last_ts")

    def __init__(self, n_slots: int = 1, *, warm_up: int = 30) -> None:
        self.warm_up = warm_up
        self.state = np.zeros((n_slots, len(self.columns)))
        self.state[:, LAST_TS] = -np.inf
        self._initial_rows(self.state)

    @property
    def state_bytes_per_series(self) -> int:
        """Bytes of state one series costs."""
        return int(self.state.shape[1] * self.state.itemsize)

    def resize(self, n_slots: int) -> None:
        """Grow the table to ``n_slots`` series, new series starting cold."""
        if n_slots <= len(self.state):
            return
        extra = np.zeros((n_slots - len(self.state), self.state.shape[1]))
        extra[:, LAST_TS] = -np.inf
        self._initial_rows(extra)
        self.state = np.vstack([self.state, extra])

    def step(self, slots: np.ndarray, ts: np.ndarray, value: np.ndarray) -> np.ndarray:
        """Score then learn one sample per series slot.

        Args:
            slots: series slot of each sample, unique within the step.
            ts: sample times, seconds.
            value: sample values; NaN marks a missing sample.

        Returns:
            The score of each sample in [0, 1].

        Raises:
            DetectorError: when the arrays do not line up (see ``check_step``).
        """
        slots = np.asarray(slots, dtype=np.int64)
        check_step(slots, ts, value, len(self.state))
        scores = np.full(len(slots), NEUTRAL_SCORE)
        rows = self._rows(slots)

        # Missing and late samples are neither scored nor learned.
        valid = np.isfinite(value) & (ts > rows[:, LAST_TS])
        if not valid.any():
            return scores
        in_place = valid.all() and np.shares_memory(rows, self.state)
        live = rows if in_place else rows[valid]
        raw = self._advance(live, ts[valid], value[valid])

        warm = live[:, SEEN] >= self.warm_up
        scores[valid] = np.where(warm, np.clip(raw, 0.0, 1.0), NEUTRAL_SCORE)
        live[:, SEEN] += 1
        live[:, LAST_TS] = ts[valid]
        if not in_place:
            self.state[slots[valid]] = live
        return scores

    def _rows(self, slots: np.ndarray) -> np.ndarray:
        """The rows of ``slots``: a view when they are one ascending run, else a copy.

        Stepping every series in slot order is the common case (the NAB harness, a
        stage's full batch); a view spares copying wide rows out and back.
        """
        if len(slots) and slots[-1] - slots[0] + 1 == len(slots) and (
                len(slots) == 1 or bool(np.all(np.diff(slots) == 1))):
            return self.state[slots[0] : slots[-1] + 1]
        return self.state[slots]

    def save(self, path: Path) -> None:
        """Write the state table to ``path`` (numpy ``.npy``)."""
        with open(path, "wb") as handle:
            np.save(handle, self.state, allow_pickle=False)

    def load(self, path: Path) -> None:
        """Replace the state table with one written by :meth:`save`.

        Raises:
            DetectorError: when the file holds a table of another shape.
        """
        table = np.load(path, allow_pickle=False)
        if table.ndim != 2 or table.shape[1] != len(self.columns):
            raise DetectorError(
                f"{type(self).__name__} snapshot {path}: expected {len(self.columns)} "
                f"columns, found shape {table.shape}; delete the snapshot to rebuild state"
            )
        self.state = table

    def adopt(self, table: np.ndarray, columns: Sequence[str]) -> tuple[str, ...] | None:
        """Take a saved table whose columns are named, matching them by name.

        A newer version may add columns, which start at their initial value as for a new
        series, or drop some, whose values are left behind: an upgrade keeps what each
        series has learned instead of warming up again. A column whose meaning changes
        must therefore change its name.

        Returns:
            The columns that started afresh, or None (nothing taken) when the names do
            not match the table's width or lack the sample count and time every row
            needs.
        """
        saved = {name: i for i, name in enumerate(columns)}
        if table.ndim != 2 or len(columns) != table.shape[1] or not {
                self.columns[SEEN], self.columns[LAST_TS]} <= saved.keys():
            return None
        rows = np.zeros((len(table), len(self.columns)))
        rows[:, LAST_TS] = -np.inf
        self._initial_rows(rows)

        shared = [i for i, name in enumerate(self.columns) if name in saved]
        rows[:, shared] = table[:, [saved[self.columns[i]] for i in shared]]
        self.state = rows
        return tuple(name for name in self.columns if name not in saved)

    def _initial_rows(self, rows: np.ndarray) -> None:
        """Set the starting values of new rows (subclasses override)."""

    def _advance(self, rows: np.ndarray, ts: np.ndarray, value: np.ndarray) -> np.ndarray:
        """Score then update ``rows`` in place; return raw scores (subclasses override)."""
        raise NotImplementedError
