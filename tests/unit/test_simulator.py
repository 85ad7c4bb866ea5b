"""The simulated estate: reproducible, seasonal, causal, and fast enough for a week."""

from __future__ import annotations

import time

import numpy as np
import pytest

from estate.simulator import (
    DAY,
    DEFAULT_EPOCH,
    WEEK,
    Effect,
    Estate,
    Simulator,
    SimulatorError,
    _backlog,
    by_series,
)
from tillwatch.sample import MAX_TS, MIN_TS, SampleBatch, series_key

SEED = 7


def _at(day: str, hour: float) -> float:
    days = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    return DEFAULT_EPOCH + days.index(day) * DAY + hour * 3600


def _key(signal: str, **labels: str) -> str:
    return series_key(signal, labels)


def _orders(store: str, company: str = "acme_be") -> str:
    return _key(
        "kpi.orders_per_minute",
        service="odoo",
        instance="odoo-db",
        company=company,
        sales_channel="pos",
        store=store,
    )


WEBSHOP_ORDERS = _key(
    "kpi.orders_per_minute",
    service="odoo",
    instance="odoo-db",
    company="acme_be",
    sales_channel="website",
)
TRAEFIK = {"service": "traefik", "instance": "traefik-1:8080"}
WEBSHOP_CHECKOUT = _key("traefik.path_latency_p95_seconds", **TRAEFIK, path="/shop/checkout")
POS_CHECKOUT = _key("traefik.path_latency_p95_seconds", **TRAEFIK, path="/pos/checkout")
STOCK_SYNC = _key(
    "kpi.stock_sync_delay_seconds", service="odoo", instance="odoo-db", company="acme_be"
)
WEBSHOP_ERRORS = _key(
    "traefik.server_error_ratio",
    service="odoo@file",
    instance="traefik-1:8080",
    router="webshop@file",
)

WEBSHOP_SLOW = _key(
    "traefik.slow_request_ratio",
    service="odoo@file",
    instance="traefik-1:8080",
    router="webshop@file",
    le="1.2",
)


def _window(rows: np.ndarray, start: float, end: float) -> np.ndarray:
    # Half-open like an effect's window: a sample at ts describes the step ending at ts.
    return rows[(rows[:, 0] >= start) & (rows[:, 0] < end), 1]


@pytest.fixture(scope="module")
def week() -> dict[str, np.ndarray]:
    return by_series(Simulator(seed=SEED).run())


def _run(*effects: Effect, duration: float = WEEK) -> dict[str, np.ndarray]:
    return by_series(Simulator(seed=SEED, effects=effects).run(duration=duration))


def _concat(batches: list[SampleBatch]) -> tuple[list[str], np.ndarray, np.ndarray]:
    keys = [b.series[ix].key for b in batches for ix in b.series_ix.tolist()]
    return (
        keys,
        np.concatenate([b.ts for b in batches]),
        np.concatenate([b.value for b in batches]),
    )


def test_same_seed_gives_identical_batches_and_another_seed_does_not():
    first = list(Simulator(seed=11).run(duration=DAY))
    again = list(Simulator(seed=11).run(duration=DAY))
    other = list(Simulator(seed=12).run(duration=DAY))

    keys, ts, values = _concat(first)
    keys_again, ts_again, values_again = _concat(again)
    assert keys == keys_again
    np.testing.assert_array_equal(ts, ts_again)
    np.testing.assert_array_equal(values, values_again)
    assert not np.array_equal(values, _concat(other)[2])


def test_chunk_size_does_not_change_the_samples():
    per_step = _concat(list(Simulator(seed=3).run(duration=DAY / 4, chunk_steps=1)))
    per_hour = _concat(list(Simulator(seed=3).run(duration=DAY / 4, chunk_steps=60)))

    assert per_step[0] == per_hour[0]
    np.testing.assert_array_equal(per_step[2], per_hour[2])


def test_batches_hold_valid_samples_in_time_order_from_the_epoch():
    batches = list(Simulator(seed=1).run(duration=DAY, chunk_steps=30))

    assert len(batches) == 48
    ts = np.concatenate([b.ts for b in batches])
    values = np.concatenate([b.value for b in batches])
    assert ts.min() == DEFAULT_EPOCH + 60 and ts.max() == DEFAULT_EPOCH + DAY
    assert np.all(np.diff(ts) >= 0)
    assert np.all(np.isfinite(values)) and ts.min() >= MIN_TS and ts.max() < MAX_TS


def test_a_custom_step_and_duration_are_honoured():
    estate = Estate(step_seconds=300)
    batches = list(Simulator(estate, seed=1).run(duration=2 * 3600))

    ts = np.unique(np.concatenate([b.ts for b in batches]))
    np.testing.assert_array_equal(ts, DEFAULT_EPOCH + 300 * np.arange(1, 25))


def test_closed_stores_sell_nothing_and_send_no_checkout_latency(week):
    antwerp_sunday = _window(week[_orders("antwerp")], _at("sun", 0), _at("sun", 24))
    brussels_night = _window(week[_orders("brussels")], _at("tue", 0), _at("tue", 8))
    latency = week[POS_CHECKOUT]

    assert antwerp_sunday.size == 1440 and not antwerp_sunday.any()
    assert brussels_night.size == 480 and not brussels_night.any()
    # Only amsterdam opens on Sunday, 12-18; every shop is closed at night.
    assert _window(latency, _at("sun", 0), _at("sun", 12) + 60).size == 0
    assert _window(latency, _at("sun", 12) + 60, _at("sun", 18) + 60).size == 360
    assert _window(latency, _at("tue", 0), _at("tue", 9) + 60).size == 0


def test_busiest_hour_sells_more_than_the_quietest(week):
    hourly = [
        _window(week[WEBSHOP_ORDERS], _at("wed", h), _at("wed", h + 1)).mean()
        for h in range(24)
    ]

    assert max(hourly) > 4 * min(hourly)
    assert int(np.argmax(hourly)) in range(18, 23)


def test_saturday_outsells_monday_in_the_shops(week):
    monday = _window(week[_orders("brussels")], _at("mon", 0), _at("mon", 24)).sum()
    saturday = _window(week[_orders("brussels")], _at("sat", 0), _at("sat", 24)).sum()

    assert saturday > 1.3 * monday


def test_starved_worker_pool_raises_latency_and_loses_orders(week):
    start, end = _at("fri", 12), _at("fri", 13)
    run = _run(Effect("driver.odoo_workers", "multiply", 0.25, start, end))

    assert _window(run[WEBSHOP_ERRORS], start, end).mean() > 0.03
    latency = _window(run[WEBSHOP_CHECKOUT], start, end).mean()
    assert latency > 3 * _window(week[WEBSHOP_CHECKOUT], start, end).mean()
    lost = _window(week[_orders("brussels")], start, end).sum()
    assert _window(run[_orders("brussels")], start, end).sum() < 0.6 * lost


def test_starved_worker_pool_makes_most_requests_slow_against_the_latency_objective(week):
    start, end = _at("fri", 12), _at("fri", 13)
    run = _run(Effect("driver.odoo_workers", "multiply", 0.25, start, end))

    # A normal week stays far inside the 99 % latency SLO (1 % of requests over 1.2 s);
    # the starved pool burns that budget more than 14.4 times over, as the fast alert needs.
    assert week[WEBSHOP_SLOW][:, 1].mean() < 0.005
    assert _window(run[WEBSHOP_SLOW], start, end).mean() > 0.144


def test_lagging_read_replica_delays_stock_sync(week):
    start, end = _at("tue", 14), _at("tue", 15)
    effect = Effect(
        "postgres.replica_lag_seconds",
        "add",
        300.0,
        start,
        end,
        {"replica": "pg-replica-1"},
    )
    run = _run(effect, duration=2 * DAY)

    delay = _window(run[STOCK_SYNC], start, end) - _window(week[STOCK_SYNC], start, end)
    np.testing.assert_allclose(delay, 300.0)


def test_lagging_standby_that_nobody_reads_leaves_stock_sync_alone(week):
    start, end = _at("tue", 14), _at("tue", 15)
    effect = Effect(
        "postgres.replica_lag_seconds",
        "add",
        300.0,
        start,
        end,
        {"replica": "pg-replica-2"},
    )
    run = _run(effect, duration=2 * DAY)

    np.testing.assert_array_equal(run[STOCK_SYNC], week[STOCK_SYNC][: len(run[STOCK_SYNC])])


def test_queue_backlog_builds_then_drains_and_delays_stock_sync(week):
    start, end = _at("wed", 10), _at("wed", 12)
    effect = Effect(
        "driver.queue_capacity", "multiply", 0.1, start, end, {"channel": "root.stock_sync"}
    )
    run = _run(effect, duration=3 * DAY)
    pending = run[
        _key(
            "queue.depth",
            service="queue",
            instance="odoo-db",
            channel="root.stock_sync",
            state="pending",
        )
    ]

    during = _window(pending, start, end)
    assert during[-1] > 100 and during[-1] > during[0]
    assert _window(pending, end + 3 * 3600, end + 4 * 3600).max() < 20
    late = _window(run[STOCK_SYNC], end - 600, end).mean()
    assert late > 10 * _window(week[STOCK_SYNC], end - 600, end).mean()


def test_stale_backup_hurts_no_kpi(week):
    effect = Effect("driver.backup_success", "set", 0.0, _at("tue", 0), _at("wed", 0))
    run = _run(effect)
    backup = {"service": "backup", "instance": "backup-1", "stanza": "main"}
    age = _key("backup.last_success_age_seconds", **backup, backup_type="diff")
    stale = _key("backup.stale", **backup)

    assert _window(run[age], _at("wed", 1), _at("wed", 1.5)).min() > 1.9 * DAY
    assert _window(week[age], _at("wed", 1), _at("wed", 1.5)).max() < DAY
    assert set(_window(run[stale], _at("tue", 1.7), _at("wed", 1.6))) == {1.0}
    assert set(week[stale][:, 1]) == {0.0}
    kpis = [key for key in week if key.startswith("kpi.")]
    assert len(kpis) == 12
    for key in kpis:
        np.testing.assert_array_equal(run[key], week[key], err_msg=key)


def test_effect_ops_on_a_noiseless_signal(week):
    cert = _key(
        "traefik.tls_cert_expiry_days", **TRAEFIK, domain="shop.acme.example", serial="3a9f1c"
    )
    start, end = _at("mon", 1), _at("mon", 2)
    run = _run(
        Effect("traefik.tls_cert_expiry_days", "set", 10.0, start, end),
        Effect("traefik.tls_cert_expiry_days", "ramp", -2.0, start, end),
        Effect("traefik.tls_cert_expiry_days", "multiply", 0.5, end, end + 600),
        Effect("traefik.tls_cert_expiry_days", "add", 100.0, end + 600, end + 1200),
        duration=DAY / 8,
    )

    ramped = _window(run[cert], start, end)
    np.testing.assert_allclose(ramped, 10.0 - 2.0 * np.arange(60) / 60)
    base = _window(week[cert], end, end + 1200)
    np.testing.assert_allclose(_window(run[cert], end, end + 600), base[:10] * 0.5)
    np.testing.assert_allclose(_window(run[cert], end + 600, end + 1200), base[10:] + 100)


def test_broken_replication_drops_a_replica_and_lag_grows_with_time():
    start, end = _at("mon", 3), _at("mon", 5)
    run = _run(
        Effect(
            "driver.replication_streaming", "set", 0.0, start, end, {"replica": "pg-replica-2"}
        ),
        duration=DAY / 4,
    )
    primary = {"service": "postgres", "instance": "pg-primary:5432"}
    lag = run[_key("postgres.replica_lag_seconds", **primary, replica="pg-replica-2")]
    connected = run[_key("postgres.replicas_connected", **primary)]
    standby = run[_key("postgres.replica_connected", **primary, replica="pg-replica-2")]
    standby_target = {"service": "postgres", "instance": "pg-replica-2:5432"}
    receiver = run[_key("postgres.wal_receiver_streaming", **standby_target)]

    # The primary has no WAL sender for it: no lag series, as the real collector.
    assert _window(lag, start, end).size == 0
    assert _window(lag, end, end + 3600).size == 60
    assert set(_window(connected, start, end)) == {1.0}
    assert set(_window(connected, end, end + 3600)) == {2.0}
    assert set(_window(standby, start, end)) == set(_window(receiver, start, end)) == {0.0}


def test_backlog_recursion_matches_the_step_by_step_definition():
    surplus = np.random.default_rng(5).normal(0, 3, (500, 3))
    start = np.array([0.0, 4.0, 40.0])
    expected, queue = [], start.copy()
    for row in surplus:
        queue = np.maximum(0.0, queue + row)
        expected.append(queue)

    np.testing.assert_allclose(_backlog(start, surplus), np.array(expected))


def test_unknown_effect_target_or_labels_are_refused_with_the_choices():
    with pytest.raises(SimulatorError, match="driver.odoo_workers"):
        Simulator(effects=[Effect("driver.odoo_worker", "set", 0.0, 0.0, 1.0)])
    with pytest.raises(SimulatorError, match="pg-replica-1"):
        Simulator(
            effects=[Effect("driver.replication_streaming", "set", 0, 0, 1, {"replica": "x"})]
        )


def test_estate_refuses_a_step_that_does_not_divide_a_day_or_a_non_monday_epoch():
    with pytest.raises(SimulatorError, match="divisor of 86400"):
        Estate(step_seconds=7)
    with pytest.raises(SimulatorError, match="Monday"):
        Estate(epoch=DEFAULT_EPOCH + DAY)


def test_a_simulated_week_takes_well_under_a_minute(capsys):
    started = time.perf_counter()
    samples = sum(len(batch) for batch in Simulator(seed=2).run(duration=WEEK))
    elapsed = time.perf_counter() - started

    with capsys.disabled():
        print(f"\nsimulated week: {samples} samples in {elapsed:.2f}s")
    assert samples > 600_000
    assert elapsed < 20.0
