"""The Numenta Anomaly Benchmark's scoring rules, written for tillwatch.

A detection is a row whose anomaly score reaches the threshold. Each row outside the
probation period is worth something if it is a detection: inside a labelled window it
earns a true-positive reward that shrinks along the window (a scaled sigmoid of its
position); outside, it costs a false-positive penalty that grows with its distance past
the preceding window. Only the best (earliest) detection of a window counts; a window
with none costs the false-negative weight. The threshold is one for the whole corpus,
chosen to maximise the summed score, and the sum is normalised so that the null
detector scores 0 and a perfect one 100.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PROBATION_FRACTION = 0.15
PROBATION_MAX_ROWS = 750


@dataclass(frozen=True, slots=True)
class Profile:
    """The weights of one NAB scoring profile."""

    name: str
    tp: float
    fp: float
    fn: float


PROFILES = (
    Profile("standard", tp=1.0, fp=0.11, fn=1.0),
    Profile("reward_low_FP_rate", tp=1.0, fp=0.22, fn=1.0),
    Profile("reward_low_FN_rate", tp=1.0, fp=0.11, fn=2.0),
)


@dataclass(frozen=True, slots=True)
class FileRows:
    """One data file's anomaly scores and labelled windows, as row indices.

    Attributes:
        name: the file's relative path, used to name its windows.
        scores: anomaly score of every row, in time order.
        windows: ``(first_row, last_row)`` of every labelled window, inclusive, sorted.
    """

    name: str
    scores: np.ndarray
    windows: Sequence[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class ProfileResult:
    """The corpus score of one profile at its best threshold."""

    profile: str
    threshold: float
    raw: float
    normalised: float
    true_positives: int
    false_positives: int
    false_negatives: int


def scaled_sigmoid(position: np.ndarray | float) -> np.ndarray:
    """NAB's weighting curve: near 1 at position -1, 0 at 0, -1 from position 3 on."""
    position = np.asarray(position, dtype=np.float64)
    curve = 2.0 / (1.0 + np.exp(5.0 * position)) - 1.0
    return np.where(position > 3.0, -1.0, curve)


def probation_rows(n_rows: int) -> int:
    """Rows at the start of a file that are never scored."""
    return int(min(math.floor(PROBATION_FRACTION * n_rows), PROBATION_FRACTION * 5000))


def row_values(n_rows: int, windows: Sequence[tuple[int, int]], profile: Profile):
    """What each row would be worth as a detection, and the window it falls in.

    Args:
        n_rows: rows in the file.
        windows: inclusive ``(first, last)`` row of each window, sorted, not overlapping.
        profile: the weights.

    Returns:
        ``(value, window)``: float64 worth of each row and int64 window index (-1 outside).
    """
    value = np.full(n_rows, -profile.fp)
    window = np.full(n_rows, -1, dtype=np.int64)
    rows = np.arange(n_rows)
    max_tp = float(scaled_sigmoid(-1.0))
    for ix, (first, last) in enumerate(windows):
        width = last - first + 1
        inside = rows[first : last + 1]
        reward = scaled_sigmoid(-(last - inside + 1) / width)
        value[first : last + 1] = reward * profile.tp / max_tp
        window[first : last + 1] = ix

        # Penalties after a window are softened until the next window starts.
        stop = windows[ix + 1][0] if ix + 1 < len(windows) else n_rows
        after = rows[last + 1 : stop]
        distance = (after - last) / max(width - 1, 1)
        value[last + 1 : stop] = scaled_sigmoid(distance) * profile.fp
    return value, window


def _scorable(files: Sequence[FileRows], profile: Profile):
    """Concatenate the scored rows of every file with corpus-wide window ids."""
    scores, values, windows = [], [], []
    n_windows = 0
    for file in files:
        value, window = row_values(len(file.scores), file.windows, profile)
        start = probation_rows(len(file.scores))
        window = window[start:]
        scores.append(np.asarray(file.scores, dtype=np.float64)[start:])
        values.append(value[start:])
        windows.append(np.where(window >= 0, window + n_windows, -1))
        n_windows += len(file.windows)
    return np.concatenate(scores), np.concatenate(values), np.concatenate(windows), n_windows


def sweep(files: Sequence[FileRows], profile: Profile):
    """The raw corpus score at every candidate threshold.

    Args:
        files: every file of the corpus.
        profile: the weights.

    Returns:
        ``(thresholds, raw, counts)``: candidate thresholds in descending order (the first
        above every score, so nothing is detected), the raw score at each, and an
        ``(n, 3)`` array of true positives, false positives and false negatives.
    """
    scores, values, windows, _ = _scorable(files, profile)
    order = np.argsort(-scores, kind="stable")
    scores, values, windows = scores[order], values[order], windows[order]
    counted = np.unique(windows[windows >= 0])

    fp_gain = np.cumsum(np.where(windows < 0, values, 0.0))
    fp_count = np.cumsum(windows < 0)
    tp_gain, tp_count = _window_gains(windows, values, profile)

    # A threshold equal to a score detects every row with that score or higher.
    last_of_run = np.r_[scores[1:] != scores[:-1], True]
    base = -profile.fn * len(counted)
    raw = np.r_[base, base + fp_gain[last_of_run] + tp_gain[last_of_run]]
    thresholds = np.r_[np.inf, scores[last_of_run]]
    tp = np.r_[0, tp_count[last_of_run]]
    fp = np.r_[0, fp_count[last_of_run]]
    counts = np.stack([tp, fp, len(counted) - tp], axis=1)
    return thresholds, raw, counts


def _window_gains(windows: np.ndarray, values: np.ndarray, profile: Profile):
    """Cumulative gain from windows as rows are added in descending score order."""
    gain = np.zeros(len(windows))
    count = np.zeros(len(windows), dtype=np.int64)
    best: dict[int, float] = {}
    for position in np.flatnonzero(windows >= 0).tolist():
        window, value = int(windows[position]), float(values[position])
        previous = best.get(window, -profile.fn)
        if window not in best:
            count[position] = 1
        if value > previous:
            gain[position] = value - previous
        best[window] = max(previous, value)
    return np.cumsum(gain), np.cumsum(count)


def score_corpus(files: Sequence[FileRows], profile: Profile) -> ProfileResult:
    """Choose the threshold that maximises the profile's score and normalise it.

    Args:
        files: every file of the corpus.
        profile: the weights.

    Returns:
        The best threshold, the raw and normalised scores and the detection counts.
    """
    thresholds, raw, counts = sweep(files, profile)
    best = int(np.argmax(raw))
    null = raw[0]
    perfect = profile.tp * counts[0, 2]
    normalised = 100.0 * (raw[best] - null) / (perfect - null) if perfect != null else 0.0
    tp, fp, fn = (int(c) for c in counts[best])
    return ProfileResult(profile.name, float(thresholds[best]), float(raw[best]),
                         float(normalised), tp, fp, fn)


def score_at(files: Sequence[FileRows], profile: Profile, threshold: float) -> float:
    """The normalised score of the corpus at a given threshold (for subsets of files)."""
    thresholds, raw, counts = sweep(files, profile)
    at = int(np.searchsorted(-thresholds, -threshold, side="right")) - 1
    null = raw[0]
    perfect = profile.tp * counts[0, 2]
    return float(100.0 * (raw[at] - null) / (perfect - null)) if perfect != null else 0.0
