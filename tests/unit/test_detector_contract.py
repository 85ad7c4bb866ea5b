"""One contract suite, run over every batch detector."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.base import NEUTRAL_SCORE, DetectorError, OneSeries
from detectors.bocpd import Bocpd
from detectors.burnrate import BurnRate
from detectors.counts import PoissonCounts
from detectors.cusum import Cusum
from detectors.ensemble import Ensemble
from detectors.pagehinkley import PageHinkley
from detectors.seasonal import Seasonal
from detectors.threshold import Threshold

LEARNED = {
    "ensemble": lambda n: Ensemble(n),
    "cusum": lambda n: Cusum(n),
    "seasonal": lambda n: Seasonal(n),
    "counts": lambda n: PoissonCounts(n),
    "page_hinkley": lambda n: PageHinkley(n),
    "bocpd": lambda n: Bocpd(n),
}
# Rules judge against a limit known in advance: they learn nothing, so the ranking test
# (which injects shifts both ways) does not apply; their own tests cover their verdicts.
RULES = {
    "threshold": lambda n: Threshold(n, limit=105.0, clear=100.0, min_duration=120.0),
    "burn_rate": lambda n: BurnRate(n, objective=0.99),
}
FACTORIES = {**LEARNED, **RULES}


@pytest.fixture(params=sorted(FACTORIES))
def make(request):
    return FACTORIES[request.param]


@pytest.fixture(params=sorted(LEARNED))
def make_learned(request):
    return LEARNED[request.param]


def noisy_stream(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = 1.7e9 + 60.0 * np.arange(n)
    value = 100 + 10 * np.sin(np.arange(n) / 50) + rng.normal(0, 1, n)
    return ts, value


def run(detector, ts: np.ndarray, value: np.ndarray) -> np.ndarray:
    slot = np.zeros(1, dtype=np.int64)
    return np.array([detector.step(slot, ts[i : i + 1], value[i : i + 1])[0]
                     for i in range(len(ts))])


def test_scores_stay_in_unit_interval(make):
    ts, value = noisy_stream(2000, seed=1)
    value[[500, 900]] = [1e9, -1e9]
    scores = run(make(1), ts, value)

    assert np.all((scores >= 0.0) & (scores <= 1.0))


def test_warm_up_returns_the_neutral_score(make):
    detector = make(1)
    ts, value = noisy_stream(detector.warm_up + 5, seed=2)
    value[: detector.warm_up] *= 1000 * np.resize([1, -1], detector.warm_up)
    scores = run(detector, ts, value)

    assert np.all(scores[: detector.warm_up] == NEUTRAL_SCORE)


def test_missing_and_out_of_order_samples_are_neutral_and_not_learned(make):
    detector = make(1)
    ts, value = noisy_stream(300, seed=3)
    run(detector, ts, value)
    before = detector.state.copy()
    slot = np.zeros(1, dtype=np.int64)

    missing = detector.step(slot, ts[-1:] + 60, np.array([np.nan]))
    late = detector.step(slot, ts[:1], np.array([1e9]))

    assert missing[0] == NEUTRAL_SCORE and late[0] == NEUTRAL_SCORE
    np.testing.assert_array_equal(detector.state, before)


def test_state_stays_bounded_over_a_million_samples(make):
    detector = make(1000)
    rng = np.random.default_rng(4)
    slots = np.arange(1000)
    size = detector.state.nbytes
    for step in range(1000):
        detector.step(slots, np.full(1000, 1.7e9 + step), rng.normal(0, 1, 1000))

    assert detector.state.nbytes == size
    assert detector.state_bytes_per_series <= 4096
    assert np.all(np.isfinite(detector.state[:, 2:]))


def test_injected_anomalies_rank_above_chance(make_learned):
    ts, value = noisy_stream(3000, seed=5)
    rng = np.random.default_rng(6)
    # Ten episodes of twenty samples each, 20 noise deviations off the usual course.
    starts = 500 + 250 * np.arange(10) + rng.integers(0, 100, 10)
    injected = (starts[:, None] + np.arange(20)[None, :]).ravel()
    value[injected] += np.repeat(rng.choice([-1, 1], 10) * 20, 20)
    scores = run(make_learned(1), ts, value)

    # Probability that an episode (its best score: detectors report an event once)
    # outranks a normal sample (AUC, ties half); chance is 0.5.
    normal = np.setdiff1d(np.arange(500, 3000), injected)
    episode = scores[injected].reshape(10, 20).max(axis=1)
    above = episode[:, None] > scores[normal][None, :]
    tied = episode[:, None] == scores[normal][None, :]
    assert (above + 0.5 * tied).mean() > 0.75


def test_scores_are_causal(make):
    ts, value = noisy_stream(400, seed=7)
    full = run(make(1), ts, value)
    altered = value.copy()
    altered[300:] += 1000
    prefix = run(make(1), ts, altered)

    np.testing.assert_array_equal(full[:300], prefix[:300])


def test_batch_path_matches_one_series_at_a_time(make):
    ts, value = noisy_stream(300, seed=8)
    together = make(2)
    paired = np.array([together.step(np.array([0, 1]), np.array([t, t]), np.array([v, -v]))
                       for t, v in zip(ts, value, strict=True)])
    alone = OneSeries(make(1))
    single = np.array([alone.step_one(t, -v) for t, v in zip(ts, value, strict=True)])

    np.testing.assert_allclose(paired[:, 1], single)


def test_slot_order_and_gaps_do_not_change_scores(make):
    # Ascending slots are stepped in place, any other order on a copy of the rows.
    ts, value = noisy_stream(300, seed=10)
    values = np.stack([value, 2 * value, value + 5])
    values[1, ::7] = np.nan  # a gap in one series takes the copying path mid-stream
    ascending, reversed_ = make(3), make(3)
    slots = np.arange(3)
    forward = np.array([ascending.step(slots, np.full(3, t), values[:, i])
                        for i, t in enumerate(ts)])
    backward = np.array([reversed_.step(slots[::-1], np.full(3, t), values[::-1, i])
                         for i, t in enumerate(ts)])

    np.testing.assert_array_equal(forward, backward[:, ::-1])
    np.testing.assert_array_equal(ascending.state, reversed_.state)


def test_a_step_with_a_repeated_series_is_refused(make):
    detector = make(2)
    with pytest.raises(DetectorError, match="twice"):
        detector.step(np.array([1, 1]), np.array([1.0, 2.0]), np.array([1.0, 2.0]))


def test_a_table_adopted_by_column_name_resumes_as_the_running_detector(make):
    ts, value = noisy_stream(300, seed=10)
    detector = make(1)
    run(detector, ts[:200], value[:200])
    # The table as another version might have written it: columns in reverse order, and
    # one this version does not know.
    names = (*reversed(detector.columns), "retired_column")
    table = np.column_stack([detector.state[:, ::-1], np.full(1, 7.0)])

    restored = make(1)
    fresh = restored.adopt(table, names)

    assert fresh == ()
    np.testing.assert_array_equal(run(restored, ts[200:], value[200:]),
                                  run(detector, ts[200:], value[200:]))


def test_a_table_without_sample_counts_is_not_adopted(make):
    detector = make(1)
    before = detector.state.copy()

    assert detector.adopt(np.ones((1, 2)), ("level", "dev")) is None
    np.testing.assert_array_equal(detector.state, before)


def test_snapshot_round_trip_resumes_without_warm_up(make, tmp_path):
    ts, value = noisy_stream(300, seed=9)
    detector = make(1)
    run(detector, ts[:200], value[:200])
    detector.save(tmp_path / "state.npy")
    restored = make(1)
    restored.load(tmp_path / "state.npy")

    np.testing.assert_array_equal(run(restored, ts[200:], value[200:]),
                                  run(detector, ts[200:], value[200:]))
