"""NAB scoring rules on small cases worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detectors.nab_score import (
    PROFILES,
    FileRows,
    Profile,
    probation_rows,
    row_values,
    scaled_sigmoid,
    score_at,
    score_corpus,
)

STANDARD = PROFILES[0]


def sigmoid_by_hand(position: float) -> float:
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def test_scaled_sigmoid_matches_the_hand_formula_and_floors_at_minus_one():
    assert float(scaled_sigmoid(-1.0)) == pytest.approx(0.986614, abs=1e-6)
    assert float(scaled_sigmoid(0.0)) == pytest.approx(0.0)
    assert float(scaled_sigmoid(0.5)) == pytest.approx(sigmoid_by_hand(0.5))
    assert float(scaled_sigmoid(3.5)) == -1.0


def test_probation_is_fifteen_percent_capped_at_750_rows():
    assert probation_rows(100) == 15
    assert probation_rows(10_000) == 750


def test_row_values_inside_and_after_a_window():
    # 20 rows, one window on rows 10..13 (width 4).
    value, window = row_values(20, [(10, 13)], STANDARD)

    assert value[5] == pytest.approx(-0.11)  # before any window: full FP cost
    assert value[10] == pytest.approx(1.0)  # first row of the window earns tp weight
    assert value[13] == pytest.approx(sigmoid_by_hand(-1 / 4) / sigmoid_by_hand(-1.0))
    # Two rows past the window, the distance is 2 / (width - 1).
    assert value[15] == pytest.approx(0.11 * sigmoid_by_hand(2 / 3))
    assert list(window[9:15]) == [-1, 0, 0, 0, 0, -1]


def test_earliest_detection_counts_once_and_false_positives_add_up():
    # 100 rows: probation 15; one window on rows 50..59; detections at 52, 55 and 20.
    scores = np.zeros(100)
    scores[[52, 55, 20]] = 1.0
    result = score_corpus([FileRows("f", scores, [(50, 59)])], STANDARD)

    tp = sigmoid_by_hand(-(59 - 52 + 1) / 10) / sigmoid_by_hand(-1.0)
    assert result.raw == pytest.approx(tp - 0.11)
    assert (result.true_positives, result.false_positives, result.false_negatives) == (1, 1, 0)
    # null = -1, perfect = +1
    assert result.normalised == pytest.approx(100 * (tp - 0.11 + 1) / 2)


def test_detections_in_probation_are_ignored_and_threshold_is_optimised():
    # A detection at row 5 (probation) and a weaker detection in the window: the
    # optimiser should keep the threshold low enough to catch the window.
    scores = np.zeros(100)
    scores[5], scores[50] = 0.9, 0.4
    result = score_corpus([FileRows("f", scores, [(50, 59)])], STANDARD)

    assert result.threshold == pytest.approx(0.4)
    assert result.raw == pytest.approx(1.0)
    assert result.normalised == pytest.approx(100.0)


def test_too_many_false_positives_make_the_null_threshold_best():
    scores = np.zeros(100)
    scores[20:40] = 1.0  # 20 FPs cost 2.2, more than the window is worth
    scores[59] = 1.0  # last row of the window earns 0
    result = score_corpus([FileRows("f", scores, [(50, 59)])], STANDARD)

    assert result.normalised == pytest.approx(0.0)
    assert result.false_negatives == 1


def test_low_fn_profile_doubles_the_miss_cost_and_score_at_reads_a_threshold():
    profile = Profile("low_fn", tp=1.0, fp=0.11, fn=2.0)
    scores = np.zeros(100)
    scores[20] = 1.0
    files = [FileRows("f", scores, [(50, 59)])]

    # One FP and a missed window: raw -2.11, null -2, perfect 1.
    assert score_at(files, profile, 1.0) == pytest.approx(100 * (-2.11 + 2) / 3)
    assert score_at(files, profile, 2.0) == pytest.approx(0.0)
