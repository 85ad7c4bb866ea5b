"""The ensemble views added for NAB's misses: a day whose shape changes inside its range."""

from __future__ import annotations

import numpy as np

from detectors.ensemble import Ensemble, EnsembleConfig

STEP = 300.0  # NAB's artificial series: one sample every five minutes
PER_DAY = int(86_400 / STEP)
START = 1_767_571_200.0  # a UTC midnight


def _daily_wave(days: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = START + STEP * np.arange(days * PER_DAY)
    hours = (ts % 86_400) / 3_600
    return ts, 50 + 30 * np.sin(2 * np.pi * hours / 24) + rng.normal(0, 1, len(ts))


def _scores(config: EnsembleConfig, ts: np.ndarray, value: np.ndarray) -> np.ndarray:
    ensemble = Ensemble(1, config)
    slot = np.zeros(1, dtype=np.int64)
    return np.array([ensemble.step(slot, ts[i : i + 1], value[i : i + 1])[0]
                     for i in range(len(ts))])


def test_a_flat_day_inside_the_usual_range_is_found_by_the_phase_view():
    ts, value = _daily_wave(10, seed=7)
    flat = slice(8 * PER_DAY, 9 * PER_DAY)
    value[flat] = 50 + np.random.default_rng(8).normal(0, 1, PER_DAY)

    with_phase = _scores(EnsembleConfig(), ts, value)
    without = _scores(EnsembleConfig(phase_decades=1e6), ts, value)

    assert with_phase[flat].max() >= 0.5
    assert without[flat].max() < 0.47  # no other view sees it: it stays inside the range


def test_ordinary_days_raise_no_alarm_once_the_phase_view_speaks():
    ts, value = _daily_wave(10, seed=9)

    scores = _scores(EnsembleConfig(), ts, value)

    assert scores[3 * PER_DAY :].max() < 0.47
