"""Threshold rules with hysteresis and minimum duration, and multi-window burn-rate rules."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.base import DetectorError, OneSeries
from detectors.burnrate import WORKBOOK_ALERTS, BurnRate
from detectors.rules import DEFAULT_RULES, BurnRateRule, rule_for
from detectors.threshold import Threshold

START = 1.7e9


def replay(detector, values, every: float = 60.0) -> np.ndarray:
    one = OneSeries(detector)
    return np.array([one.step_one(START + every * i, v) for i, v in enumerate(values)])


def test_threshold_fires_only_after_the_minimum_duration_beyond_the_limit():
    # One-minute samples, a 5-minute minimum: four minutes beyond is not enough.
    rule = Threshold(limit=300.0, min_duration=300.0)
    values = [10] * 5 + [400] * 5 + [10] * 5 + [400] * 8

    scores = replay(rule, values)

    assert scores[:15].max() == 0.0
    # The second run starts at sample 15; 300 s later is sample 20.
    assert scores[15:20].max() == 0.0 and scores[20:].min() == 1.0


def test_threshold_clears_only_past_the_hysteresis_edge():
    rule = Threshold(limit=300.0, clear=200.0)
    values = [400, 250, 299, 250, 199, 250, 301]

    scores = replay(rule, values)

    # Firing survives the dip under the limit; clears under 200; fires again past 300.
    np.testing.assert_array_equal(scores, [1, 1, 1, 1, 0, 0, 1])


def test_a_lower_limit_fires_below_it_and_clears_above_its_edge():
    rule = Threshold(limit=14.0, clear=21.0, above=False)
    values = [30, 15, 13, 12, 20, 89]

    np.testing.assert_array_equal(replay(rule, values, every=3600.0), [0, 0, 1, 1, 1, 0])


def test_a_threshold_with_its_clear_edge_on_the_wrong_side_is_refused():
    with pytest.raises(DetectorError, match="clear 400"):
        Threshold(limit=300.0, clear=400.0)


def test_a_gap_in_the_samples_does_not_break_a_run():
    rule = Threshold(limit=1.0, min_duration=600.0)
    one = OneSeries(rule)
    first = one.step_one(START, 5.0)
    missing = one.step_one(START + 300, np.nan)
    later = one.step_one(START + 600, 5.0)

    assert (first, missing, later) == (0.0, 0.0, 1.0)


def test_a_short_outage_burns_too_little_of_the_budget_to_page():
    # 99.9 % objective: 5 % errors for ten minutes after two clean hours.
    rule = BurnRate(objective=0.999)
    scores = replay(rule, [0.0] * 120 + [0.05] * 10 + [0.0] * 30)

    # Fast: 10 * 0.05 / 60 = 0.83 % < 1.44 % over the hour. Slow: 10 * 0.05 / 130
    # = 0.38 % < 0.6 % over the (two hours of) six.
    assert scores.max() == 0.0


def test_the_fast_alert_fires_when_the_hour_burns_and_stops_with_the_five_minutes():
    rule = BurnRate(objective=0.999, alerts=((60, 5, 14.4),))
    scores = replay(rule, [0.0] * 120 + [0.05] * 30 + [0.0] * 60)

    fired = np.flatnonzero(scores)
    # The hour reaches 1.44 % after 18 bad minutes (0.0144 * 60 / 0.05 = 17.3).
    assert fired[0] == 120 + 17
    # Three clean minutes leave one bad minute in five: 1 % < 1.44 %, the alert stops.
    assert fired[-1] == 150 + 2
    assert len(fired) == fired[-1] - fired[0] + 1
    np.testing.assert_allclose(rule.burn(np.array([0]), 60), 0.0, atol=1e-9)
    np.testing.assert_allclose(rule.burn(np.array([0]), 360), 30 * 0.05 / 210 / 0.001)


def test_with_both_alerts_the_slow_one_holds_until_its_half_hour_is_clean_enough():
    rule = BurnRate(objective=0.999)
    scores = replay(rule, [0.0] * 120 + [0.05] * 30 + [0.0] * 60)

    fired = np.flatnonzero(scores)
    # Slow: n bad minutes of 120 + n reach 0.6 % at n = 17 (0.72 / 0.044 = 16.4).
    assert fired[0] == 120 + 16
    # The last half hour holds >= 4 bad minutes (0.006 * 30 / 0.05 = 3.6) until 175.
    assert fired[-1] == 175


def test_burn_rate_slow_alert_catches_a_long_moderate_burn():
    rule = BurnRate(objective=0.999)
    # 0.8 % errors: 8x burn, below the fast 14.4x, above the slow 6x.
    values = [0.0] * 60 + [0.008] * 300
    scores = replay(rule, values)

    fired = np.flatnonzero(scores)
    # 6 h window (only 6 h of data at most): 6x needs 0.006 * n_minutes / 0.008 minutes.
    assert len(fired) and scores[:60 + 150].max() == 0.0
    first = fired[0]
    assert 0.008 * (first - 59) >= 0.006 * (first + 1) - 1e-12


def test_burn_rate_forgets_minutes_older_than_six_hours():
    rule = BurnRate(objective=0.999)
    replay(rule, [1.0] * 10)
    one = OneSeries(rule)
    one.step_one(START + 60.0 * (10 + 360), 0.0)

    # The ten bad minutes left the ring: only the one clean minute remains.
    assert rule.burn(np.array([0]), 360)[0] == 0.0


def test_burn_rate_state_is_under_four_kilobytes_per_series():
    assert BurnRate(10).state_bytes_per_series <= 4096


def test_running_window_sums_agree_with_the_ring_at_any_sampling_rhythm():
    rng = np.random.default_rng(11)
    rule = BurnRate(objective=0.99)
    one = OneSeries(rule)
    ts = START
    for _ in range(800):
        ts += float(rng.choice([15.0, 60.0, 61.0, 300.0, 4000.0], p=[.4, .4, .1, .09, .01]))
        one.step_one(ts, float(rng.uniform(0, 0.05)))
        for window in rule.windows:
            total, count = rule._window(np.array([0]), window)
            np.testing.assert_allclose(total / count / rule.budget,
                                       rule.burn(np.array([0]), window), rtol=1e-9)


SLOW_LABELS = {"router": "webshop@file", "service": "odoo@file", "le": "0.3"}
SCRAPE = 15.0  # seconds, the collectors' usual interval


def slow_ratios(rng: np.random.Generator, share: float, minutes: int) -> np.ndarray:
    """The collector's slow_request_ratio for ``minutes`` of scrapes, each over the Poisson
    count of requests of its interval, each slow with probability ``share``."""
    requests = np.maximum(rng.poisson(100, int(minutes * 60 / SCRAPE)), 1)
    return rng.binomial(requests, share) / requests


def built_in_slow_request_rule() -> tuple[BurnRateRule, BurnRate]:
    index = rule_for("traefik.slow_request_ratio", SLOW_LABELS, DEFAULT_RULES)
    assert index is not None
    rule = DEFAULT_RULES[index]
    assert isinstance(rule, BurnRateRule)
    return rule, rule.build(1)


def test_twenty_percent_slow_requests_page_the_fast_latency_window():
    rng = np.random.default_rng(5)
    rule, detector = built_in_slow_request_rule()
    ratios = np.concatenate([slow_ratios(rng, 0.005, 120), slow_ratios(rng, 0.2, 60)])

    one = OneSeries(detector)
    first = next(i for i, ratio in enumerate(ratios)
                 if one.step_one(START + SCRAPE * i, ratio) == 1.0)

    onset = 120 * 60 / SCRAPE
    minutes_in = (first - onset + 1) * SCRAPE / 60
    # 99 % objective: the fast alert needs 14.4 % slow over the hour; at 20 % after a
    # 0.5 % baseline, n minutes give (0.2 n + 0.005 (60 - n)) / 60 >= 0.144 at n = 43. The
    # slow alert's 6 % over 6 h (here 2 h + n) needs n = 47: the fast window pages first.
    assert first > onset
    assert 40 <= minutes_in <= 46, minutes_in
    explained = rule.explain("traefik.slow_request_ratio", ratios[first], detector, 0)
    assert "99% objective" in explained and "over 60 min" in explained, explained
    assert "over 360 min" not in explained, explained


def test_half_a_percent_slow_requests_never_fire():
    rng = np.random.default_rng(6)
    _, detector = built_in_slow_request_rule()
    ratios = slow_ratios(rng, 0.005, 12 * 60)

    scores = replay(detector, ratios, every=SCRAPE)

    # Half the 1 % budget: a burn rate near 0.5, far below the slow alert's 6.
    assert scores.max() == 0.0
    assert 0.3 < detector.burn(np.array([0]), 360)[0] < 0.7


def test_the_service_slow_request_ratio_has_the_same_latency_objective():
    labels = {"service": "odoo@file", "le": "0.3"}
    index = rule_for("traefik.service_slow_request_ratio", labels, DEFAULT_RULES)

    assert index is not None
    rule = DEFAULT_RULES[index]
    assert isinstance(rule, BurnRateRule) and rule.objective == 0.99
    assert rule.alerts == WORKBOOK_ALERTS
