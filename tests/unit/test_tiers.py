"""Tier decisions and tier changes, on incidents built from hand-made anomalies."""

from __future__ import annotations

import pytest

from alerts.incidents import Incident, IncidentBuilder
from alerts.tiers import TierPolicy, TierRule, TierTracker
from tests.unit.test_incidents import T0, anomaly
from tillwatch.anomaly import Anomaly, Direction
from tillwatch.errors import ConfigError


def incident_of(*anomalies: Anomaly) -> Incident:
    """The one incident the anomalies form (the test fails if they form several)."""
    builder = IncidentBuilder()
    builder.observe_all(anomalies)
    [incident] = builder.open_incidents(max(a.ts for a in anomalies))
    return incident


def decide(*anomalies: Anomaly) -> tuple[str, str]:
    decision = TierPolicy().decide(incident_of(*anomalies))
    return decision.tier, decision.alertname


@pytest.mark.parametrize(
    ("signal", "direction", "observed", "expected"),
    [
        ("kpi.orders_per_minute", "down", 12.0, 40.0),
        ("kpi.checkout_latency_p95_seconds", "up", 4.0, 0.9),
        ("kpi.checkout_error_ratio", "up", 0.08, 0.002),
        ("kpi.stock_sync_delay_seconds", "up", 1800.0, 60.0),
    ],
)
def test_a_hurt_kpi_pages(
    signal: str, direction: Direction, observed: float, expected: float
) -> None:
    hurt = anomaly(0, signal, direction, observed, expected)

    assert decide(hurt) == ("page", "BusinessKpiHurt")


def test_promotion_peak_with_orders_up_is_not_a_page() -> None:
    peak = anomaly(0, "kpi.orders_per_minute", "up", 120.0, 40.0)

    assert decide(peak) == ("info", "DemandPeak")


def test_promotion_peak_with_saturated_workers_is_a_capacity_notice() -> None:
    labels = {"service": "odoo"}
    peak = anomaly(0, "kpi.orders_per_minute", "up", 120.0, 40.0, labels)
    requests = anomaly(5, "traefik.requests_per_second", "up", 900.0, 300.0, labels)
    busy = anomaly(10, "traefik.path_requests_per_second", "up", 3.0, 1.0, labels)

    assert decide(peak, requests, busy) == ("info", "DemandPeak")


def test_orders_up_do_not_hide_an_unrelated_fault() -> None:
    peak = anomaly(0, "kpi.orders_per_minute", "up", 120.0, 40.0)
    misses = anomaly(10, "redis.hit_ratio", "down", 0.3, 0.95)

    assert decide(peak, misses) == ("ticket", "InfrastructureAnomaly")


def test_kpi_with_no_known_harmful_direction_is_a_notice() -> None:
    basket = anomaly(0, "kpi.basket_items_mean", "down", 2.0, 3.5)

    assert decide(basket) == ("info", "KpiShift")


def test_stale_backup_alone_is_a_ticket() -> None:
    stale = anomaly(0, "backup.last_success_age_seconds", "up", 200_000.0, 43_000.0)

    assert decide(stale) == ("ticket", "ControlFailing")


def test_certificate_near_expiry_is_a_ticket() -> None:
    expiring = anomaly(0, "traefik.cert_expiry_seconds", "down", 86_400.0, 5e6)

    assert decide(expiring) == ("ticket", "ControlFailing")


def test_broken_replication_with_a_fresh_backup_is_a_ticket() -> None:
    broken = anomaly(0, "postgres.replication_lag_seconds", "up", 3600.0, 1.0)

    assert decide(broken) == ("ticket", "InfrastructureAnomaly")


def test_broken_replication_and_no_fresh_backup_is_a_page() -> None:
    broken = anomaly(0, "postgres.replica_connected", "down", 0.0, 1.0)
    stale = anomaly(30, "backup.last_success_age_seconds", "up", 200_000.0, 43_000.0)

    assert decide(broken, stale) == ("page", "DataAtRisk")


def test_disconnected_replica_and_failing_backup_is_a_page() -> None:
    gone = anomaly(0, "postgres.replicas_connected", "down", 1.0, 2.0, {"service": "postgres"})
    failing = anomaly(60, "backup.stale", "up", 1.0, 0.0, {"service": "backup"})

    assert decide(gone, failing) == ("page", "DataAtRisk")


def test_byte_lag_wobble_beside_a_stale_backup_is_a_ticket() -> None:
    # Seen in the demo: an 82 kB lag blip joined a stale-backup incident and paged it.
    behind = anomaly(0, "postgres.replica_lag_bytes", "up", 82_519.0, 10_954.0)
    stale = anomaly(30, "backup.stale", "up", 1.0, 0.0, {"service": "backup"})

    assert decide(behind, stale) == ("ticket", "ControlFailing")


def test_capacity_trend_is_info() -> None:
    filling = anomaly(0, "postgres.disk_free_bytes", "down", 5e9, 4e10, detector="trend")

    assert decide(filling) == ("info", "TrendNotice")


def test_infrastructure_anomaly_without_impact_is_a_ticket() -> None:
    misses = anomaly(0, "redis.hit_ratio", "down", 0.3, 0.95)

    assert decide(misses) == ("ticket", "InfrastructureAnomaly")


def test_rules_table_can_be_replaced() -> None:
    # A shop that wants every infrastructure anomaly paged, say during peak season.
    always = TierRule("page", "AnyAnomaly", lambda policy, findings: bool(findings), "peak")
    incident = incident_of(anomaly(0, "redis.hit_ratio", "down", 0.3, 0.95))

    decision = TierPolicy(rules=[always]).decide(incident)

    assert (decision.tier, decision.alertname, decision.severity) == (
        "page", "AnyAnomaly", "critical"
    )


def test_incident_moves_between_tiers_as_its_impact_changes() -> None:
    builder = IncidentBuilder(window=60, quiet_period=300)
    tracker = TierTracker()
    steps = [
        builder.observe(anomaly(0, "postgres.locks_waiting", "up", 40.0, 2.0)),
        builder.observe(anomaly(20, "kpi.orders_per_minute", "down", 10.0, 40.0)),
        builder.observe(anomaly(50, "postgres.locks_waiting", "up", 30.0, 2.0)),
        builder.observe(anomaly(100, "postgres.locks_waiting", "up", 35.0, 2.0)),
        builder.advance(T0 + 399),
        builder.advance(T0 + 400),
    ]

    alerts = [tracker.apply_all(events) for events in steps]

    flat = [(a.kind, a.decision.tier, a.previous_tier) for step in alerts for a in step]
    assert flat == [
        ("opened", "ticket", None),
        ("updated", "page", "ticket"),
        ("updated", "ticket", "page"),  # orders recovered: the page steps down
        ("resolved", "ticket", None),
    ]
    assert alerts[-1][0].status == "resolved"
    assert len({a.incident.incident_id for step in alerts for a in step}) == 1


def test_quiet_incident_keeps_its_tier_until_it_resolves() -> None:
    builder = IncidentBuilder(window=60, quiet_period=600)
    tracker = TierTracker()
    tracker.apply_all(builder.observe(anomaly(0, "kpi.checkout_error_ratio", "up", 0.1, 0.01)))

    quiet = tracker.apply_all(builder.advance(T0 + 120))
    resolved = tracker.apply_all(builder.advance(T0 + 600))

    assert quiet == []
    assert [(a.kind, a.decision.tier) for a in resolved] == [("resolved", "page")]


def test_stock_sync_delay_pages_only_past_its_budget() -> None:
    # Half a minute later than usual is noise; five minutes late is stock nobody can sell.
    late = anomaly(0, "kpi.stock_sync_delay_seconds", "up", 60.0, 35.0)
    very_late = anomaly(0, "kpi.stock_sync_delay_seconds", "up", 300.0, 55.0)

    assert decide(late) == ("info", "KpiShift")
    assert decide(very_late) == ("page", "BusinessKpiHurt")


def test_a_kpi_climbing_past_its_budget_pages_once_the_cause_has_gone_quiet() -> None:
    # A replica lag detector flags the onset only; stock sync keeps climbing after it.
    builder, tracker = IncidentBuilder(window=300), TierTracker()
    lag = anomaly(0, "postgres.replica_lag_seconds", "up", 13.0, 0.1)
    delays = [
        anomaly(60 * n, "kpi.stock_sync_delay_seconds", "up", 40.0 + 15 * n, 38.0)
        for n in range(2, 12)
    ]

    alerts = tracker.apply_all(builder.observe_all([lag, *delays]))

    told = [(a.ts - T0, a.decision.tier) for a in alerts]
    assert told[0] == (0, "ticket")
    # 130 s at minute 6 is the first reading past the 120 s budget; the lag went quiet at 5.
    assert (360, "page") in told
    assert all(tier != "page" for ts, tier in told if ts < 360)


def test_readings_that_change_neither_tier_nor_signature_send_no_alert() -> None:
    builder, tracker = IncidentBuilder(), TierTracker()
    stream = [anomaly(15 * n, "redis.hit_ratio", "down", 0.5 - n / 100, 0.9) for n in range(5)]

    alerts = tracker.apply_all(builder.observe_all(stream))

    assert [(a.kind, a.decision.tier) for a in alerts] == [("opened", "ticket")]


def test_checkout_path_latency_pages_past_the_customers_budget() -> None:
    path = {"service": "traefik", "path": "/shop/checkout"}
    slow = anomaly(0, "traefik.path_latency_p95_seconds", "up", 17.0, 0.9, path)
    busy = anomaly(0, "traefik.path_latency_p95_seconds", "up", 1.4, 0.9, path)

    assert decide(slow) == ("page", "BusinessKpiHurt")
    assert decide(busy) == ("ticket", "InfrastructureAnomaly")


def test_budgets_are_configurable() -> None:
    late = incident_of(anomaly(0, "kpi.stock_sync_delay_seconds", "up", 60.0, 35.0))

    strict = TierPolicy(kpi_budgets=[("kpi.stock_sync_delay*", 45.0)])

    assert strict.decide(late).tier == "page"
    assert TierPolicy(kpi_budgets=[]).decide(late).tier == "page"


def test_a_kpi_without_budget_needs_min_kpi_anomalies_to_page() -> None:
    first = anomaly(0, "kpi.orders_per_minute", "down", 1.0, 6.0)
    again = anomaly(60, "kpi.orders_per_minute", "down", 0.0, 6.0)
    policy = TierPolicy(min_kpi_anomalies=2)

    assert policy.decide(incident_of(first)).tier == "info"
    assert policy.decide(incident_of(first, again)).tier == "page"


def test_min_kpi_anomalies_below_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="min_kpi_anomalies"):
        TierPolicy(min_kpi_anomalies=0)


def test_rising_load_alone_is_a_notice_not_a_ticket() -> None:
    router = {"service": "odoo@file", "router": "webshop@file"}
    requests = anomaly(0, "traefik.requests_per_second", "up", 10.8, 3.9, router)

    assert decide(requests) == ("info", "TrendNotice")
