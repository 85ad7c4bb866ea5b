"""Seasonal baseline and count-aware detection: what is normal at this hour is not alarmed."""

from __future__ import annotations

import numpy as np

from detectors.calendar import Calendar, CalendarEvent, TradingHours
from detectors.counts import PoissonCounts
from detectors.seasonal import Seasonal, hour_slots

MONDAY = 1_767_571_200.0  # 2026-01-05 00:00 UTC
DAY = 86_400.0
# A shop open 9..19 every day, busiest at 13:00, quiet at 10:00.
SHOP = (9.0, 19.0)


def minutes(days: int) -> np.ndarray:
    return MONDAY + 60.0 * np.arange(1, days * 1440 + 1)


def shop_rate(ts: np.ndarray, peak_per_hour: float) -> np.ndarray:
    hour = np.mod(ts, DAY) / 3600.0
    open_now = (hour > SHOP[0]) & (hour <= SHOP[1])
    shape = 0.1 + 0.9 * np.exp(-(((hour - 13.0) / 1.5) ** 2))
    return peak_per_hour / 60.0 * shape * open_now


def run(detector, ts: np.ndarray, value: np.ndarray) -> np.ndarray:
    slot = np.zeros(1, dtype=np.int64)
    return np.array([detector.step(slot, ts[i : i + 1], value[i : i + 1])[0]
                     for i in range(len(ts))])


def test_hour_slots_follow_day_types_and_borrow_the_weekday_hour():
    saturday_noon = MONDAY + 5 * DAY + 12 * 3600 + 60
    own, borrowed = hour_slots(np.array([MONDAY + 3600, saturday_noon]), (0,) * 5 + (1, 2), 0)

    assert own.tolist() == [1, 24 + 12] and borrowed.tolist() == [1, 12]


def test_an_empty_busiest_hour_is_anomalous_and_an_empty_quiet_hour_is_not():
    ts = minutes(8)
    rng = np.random.default_rng(11)
    orders = rng.poisson(shop_rate(ts, 30.0)).astype(float)
    day8 = ts >= MONDAY + 7 * DAY
    hour = np.mod(ts, DAY) / 3600.0
    busiest = day8 & (hour > 12.5) & (hour <= 13.5)
    quiet = day8 & (hour > 9.0) & (hour <= 10.0)
    orders[busiest | quiet] = 0.0

    scores = run(PoissonCounts(1, day_types=(0,) * 7), ts, orders)

    assert scores[busiest].max() >= 0.5
    assert scores[quiet].max() < 0.5
    # Seven days of ordinary trading: nothing worth an alert.
    assert (scores[~day8] >= 0.5).mean() < 0.001


def test_a_normal_week_of_daily_seasonality_raises_no_alarm_but_a_spike_does():
    ts = minutes(7)
    rng = np.random.default_rng(12)
    hour = np.mod(ts, DAY) / 3600.0
    latency = 0.3 + 0.4 * np.exp(-(((hour - 13.0) / 2.0) ** 2)) + rng.normal(0, 0.02, len(ts))
    spike = int(np.flatnonzero(ts >= MONDAY + 6 * DAY + 15 * 3600)[0])
    latency[spike : spike + 10] += 1.0

    scores = run(Seasonal(1, day_types=(0,) * 7), ts, latency)

    normal = np.r_[np.arange(spike), np.arange(spike + 40, len(ts))]
    assert scores[spike : spike + 10].max() >= 0.5
    assert (scores[normal] >= 0.5).mean() < 0.001


def test_flagged_samples_barely_move_the_profile():
    ts = minutes(4)
    rng = np.random.default_rng(13)
    value = 100 + rng.normal(0, 1, len(ts))
    detector = Seasonal(1, day_types=(0,) * 7)
    run(detector, ts[: 3 * 1440], value[: 3 * 1440])
    before = detector.band(np.zeros(1, dtype=int), ts[3 * 1440 + 30 : 3 * 1440 + 31])[0]
    value[3 * 1440 : 3 * 1440 + 30] = 1000.0
    run(detector, ts[3 * 1440 : 3 * 1440 + 30], value[3 * 1440 : 3 * 1440 + 30])
    after = detector.band(np.zeros(1, dtype=int), ts[3 * 1440 + 30 : 3 * 1440 + 31])[0]

    assert abs(after[0] - before[0]) < 1.0


def test_trading_hours_and_events_mask_samples():
    week = (SHOP,) * 6 + (None,)
    calendar = Calendar(
        hours=[TradingHours({"store": "ghent"}, week)],
        events=[CalendarEvent.from_config(
            {"name": "sale", "start": "2026-01-06T10:00", "end": "2026-01-06T12:00",
             "labels": {"store": "ghent"}})],
    )
    at = MONDAY + np.array([8 * 3600, 11 * 3600, DAY + 11 * 3600, 6 * DAY + 11 * 3600])

    assert calendar.masked(at, {"store": "ghent"}).tolist() == [True, False, True, True]
    assert not calendar.masked(at[1:2], {"store": "antwerp"}).any()
    assert calendar.events_at(at[2], {"store": "ghent"}) == ["sale"]
