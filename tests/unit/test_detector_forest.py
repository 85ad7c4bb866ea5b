"""The per-service IsolationForest: joint anomalies, neutral before the first fit."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.base import NEUTRAL_SCORE, DetectorError
from detectors.forest import ServiceForest


def correlated_rows(n: int, seed: int) -> np.ndarray:
    """Request rate and latency that rise together, plus an unrelated queue depth."""
    rng = np.random.default_rng(seed)
    load = rng.uniform(0, 1, n)
    return np.column_stack([100 + 50 * load + rng.normal(0, 1, n),
                            0.2 + 0.1 * load + rng.normal(0, 0.002, n),
                            rng.normal(5, 1, n)])


def test_a_joint_anomaly_no_single_series_shows_scores_above_normal_rows():
    rows = correlated_rows(700, seed=1)
    # High load with the latency of an idle service: each value is within its range.
    odd = np.array([[145.0, 0.205, 5.0], [105.0, 0.295, 5.0]])
    forest = ServiceForest(3, refit_every=500, window=1000, background=False, warm_up=500)
    forest.step_many(rows[:600])

    normal = forest.step_many(rows[600:])
    joint = forest.step_many(odd)

    assert odd[:, 0].min() > rows[:, 0].min() and odd[:, 1].max() < rows[:, 1].max()
    assert joint.min() > normal.max()
    assert joint.min() >= 0.5 and np.mean(normal >= 0.5) < 0.01


def test_scores_are_neutral_until_the_first_background_fit_then_repeat_with_the_seed():
    rows = correlated_rows(400, seed=2)
    runs = []
    for _ in range(2):
        forest = ServiceForest(3, refit_every=300, window=300, warm_up=300)
        early = forest.step_many(rows[:300])
        forest.wait()
        runs.append(forest.step_many(rows[300:]))
        assert set(early.tolist()) == {NEUTRAL_SCORE} and forest.fitted

    np.testing.assert_array_equal(runs[0], runs[1])
    assert runs[0].min() >= 0.0 and runs[0].max() <= 1.0


def test_a_missing_value_repeats_the_series_last_one():
    rows = correlated_rows(300, seed=3)
    forest = ServiceForest(3, refit_every=200, background=False, warm_up=0)
    forest.step_many(rows[:299])
    gap = rows[299].copy()
    gap[1] = np.nan
    filled = rows[299].copy()
    filled[1] = rows[298, 1]

    twin = ServiceForest(3, refit_every=200, background=False, warm_up=0)
    twin.step_many(rows[:299])
    assert forest.step(gap) == twin.step(filled)


def test_a_row_of_the_wrong_width_is_refused():
    with pytest.raises(DetectorError, match="one value per series"):
        ServiceForest(3).step(np.zeros(2))


def test_a_model_fitted_on_fewer_rows_than_the_warm_up_stays_neutral():
    rows = correlated_rows(700, seed=4)
    forest = ServiceForest(3, refit_every=256, background=False, warm_up=512)
    forest.step_many(rows[:300])
    young = forest.step_many(rows[300:400])
    forest.step_many(rows[400:600])

    assert forest.fitted and set(young.tolist()) == {NEUTRAL_SCORE}
    assert forest.step_many(rows[600:]).max() > NEUTRAL_SCORE


def test_a_series_that_never_moved_is_fitted_without_warnings_and_flagged_when_it_moves():
    rows = correlated_rows(400, seed=5)
    rows[:, 2] = 0.0  # evictions: none so far
    forest = ServiceForest(3, refit_every=300, background=False, warm_up=300)
    forest.step_many(rows[:300])
    moved = rows[300].copy()
    moved[2] = 1.0

    ordinary, flagged = forest.step_many(np.vstack([rows[301], moved]))
    assert ordinary < 0.5 <= flagged


def feed(forest: ServiceForest, rows: np.ndarray, batch: int = 40) -> np.ndarray:
    """Score rows in batches, letting each background refit land before the next batch."""
    scores = []
    for first in range(0, len(rows), batch):
        scores.append(forest.step_many(rows[first:first + batch]))
        forest.wait()
    return np.concatenate(scores)


@pytest.mark.parametrize("cut", [60, 460])
def test_a_restored_forest_scores_the_following_rows_as_the_uninterrupted_one(tmp_path, cut):
    rows = correlated_rows(1000, seed=6)
    settings = {"window": 300, "refit_every": 100, "warm_up": 200}
    running = ServiceForest(3, **settings)
    feed(running, rows[:cut])
    np.savez(tmp_path / "forest.npz", **running.snapshot())

    restored = ServiceForest(3, **settings)
    with np.load(tmp_path / "forest.npz", allow_pickle=False) as saved:
        recent = len(saved["recent"])
        restored.restore(dict(saved))
    fitted_on_restore = restored.fitted
    after = feed(restored, rows[cut:])

    np.testing.assert_allclose(after, feed(running, rows[cut:]), rtol=1e-12, atol=0)
    assert after.max() > NEUTRAL_SCORE
    # Cut at 460: the model was fitted at row 400 on rows 100..400, 60 of which have
    # left the window since; before any fit (cut at 60) the window is all there is.
    assert recent == (60 if cut == 460 else cut)
    assert fitted_on_restore == (cut == 460)


def test_a_restore_refuses_rows_of_another_width():
    three = ServiceForest(3, refit_every=100, background=False, warm_up=0)
    three.step_many(correlated_rows(150, seed=7))

    with pytest.raises(DetectorError, match="expected 2 series"):
        ServiceForest(2).restore(three.snapshot())
    with pytest.raises(DetectorError, match="no since_fit array"):
        ServiceForest(3).restore({k: v for k, v in three.snapshot().items()
                                  if k != "since_fit"})
