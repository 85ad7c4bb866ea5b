"""Page-Hinkley and BOCPD: what each promises about a level shift, and about noise."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from detectors.bocpd import Bocpd
from detectors.pagehinkley import PageHinkley
from detectors.table import TableDetector

CHANGE = 400
FAMILIES: dict[str, Callable[[], TableDetector]] = {
    "page_hinkley": lambda: PageHinkley(1),
    "bocpd": lambda: Bocpd(1),
}


@pytest.fixture(params=sorted(FAMILIES))
def make(request) -> Callable[[], TableDetector]:
    return FAMILIES[request.param]


def scores_of(detector: TableDetector, value: np.ndarray) -> np.ndarray:
    slot = np.zeros(1, dtype=np.int64)
    ts = 1.7e9 + 60.0 * np.arange(len(value))
    return np.array([detector.step(slot, ts[i : i + 1], value[i : i + 1])[0]
                     for i in range(len(value))])


def stepped(seed: int, size: float, length: int = 800) -> np.ndarray:
    """Orders per minute around 120 with a deviation of 6, shifted by ``size`` deviations
    from sample CHANGE on."""
    value = 120 + 6 * np.random.default_rng(seed).normal(size=length)
    value[CHANGE:] += 6 * size
    return value


@pytest.mark.parametrize("size", [3.0, -3.0])
def test_a_three_deviation_step_is_confirmed_within_eight_samples(make, size):
    for seed in range(5):
        scores = scores_of(make(), stepped(seed, size))

        hits = np.flatnonzero(scores[CHANGE:] >= 1.0)
        assert len(hits) and hits[0] < 8, f"seed {seed}: first hit {hits[:1]}"


def test_normal_noise_alone_stays_below_the_bar(make):
    # Five series of 2,000 samples; a false alarm rate near one in 10,000 allows at most
    # a couple, so more than three means the detector fires on noise.
    alarms = sum(int((scores_of(make(), stepped(seed, 0.0, 2000))[30:] >= 1.0).sum())
                 for seed in range(10, 15))

    assert alarms <= 3


def test_a_confirmed_change_becomes_the_new_baseline(make):
    scores = scores_of(make(), stepped(20, 4.0))

    # Reported once: at most one confirmation near the change, then quiet at the new level.
    assert (scores[CHANGE : CHANGE + 10] >= 1.0).sum() == 1
    assert scores[CHANGE + 60 :].max() < 1.0
    assert np.median(scores[CHANGE + 60 :]) < 0.2


def test_bocpd_explains_a_lone_spike_as_an_outlier_not_a_change():
    value = stepped(30, 0.0)
    value[CHANGE] += 6 * 8.0
    calm = scores_of(Bocpd(1), value)
    strict = scores_of(Bocpd(1, outlier=0.0), value)

    assert calm[CHANGE : CHANGE + 20].max() < 1.0
    assert strict[CHANGE : CHANGE + 20].max() == 1.0


def test_bocpd_run_length_mass_stays_a_distribution():
    detector = Bocpd(3)
    rng = np.random.default_rng(40)
    for step in range(500):
        detector.step(np.arange(3), np.full(3, 1.7e9 + step), rng.standard_t(3, 3))
    mass = detector.state[:, 7 : 7 + detector.runs]

    np.testing.assert_allclose(mass.sum(axis=1), 1.0)
    assert np.all(mass >= 0.0)
