"""Incident grouping, root cause, KPI impact and lifecycle, on hand-built anomalies."""

from __future__ import annotations

from dataclasses import replace

import pytest

from alerts.incidents import IncidentBuilder, IncidentEvent
from alerts.topology import Topology
from tillwatch.anomaly import REMINDER, Anomaly, Direction
from tillwatch.errors import ConfigError
from tillwatch.sample import Series

T0 = 1_780_000_000.0


def anomaly(
    ts: float,
    signal: str,
    direction: Direction = "up",
    observed: float = 2.0,
    expected: float = 1.0,
    labels: dict[str, str] | None = None,
    detector: str = "ensemble",
) -> Anomaly:
    """An anomaly of ``signal`` at ``T0 + ts`` (the series id is the real one)."""
    labels = labels or {}
    return Anomaly(
        ts=T0 + ts,
        series_id=Series.of(signal, labels).id,
        signal=signal,
        labels=labels,
        score=0.9,
        observed=observed,
        expected=expected,
        lower=expected * 0.8,
        upper=expected * 1.2,
        direction=direction,
        detector=detector,
    )


def kinds(events: list[IncidentEvent]) -> list[tuple[str, str]]:
    return [(event.kind, event.incident.incident_id) for event in events]


def test_infrastructure_anomaly_and_the_kpi_it_hurts_form_one_incident() -> None:
    builder = IncidentBuilder()

    opened = builder.observe(anomaly(0, "postgres.connections_active"))
    joined = builder.observe(anomaly(30, "kpi.orders_per_minute", "down", 15.0, 40.0))

    assert [event.kind for event in opened] == ["opened"]
    assert [event.kind for event in joined] == ["updated"]
    incident = joined[0].incident
    assert incident.incident_id == opened[0].incident.incident_id
    assert [f.signal for f in incident.findings] == [
        "postgres.connections_active",
        "kpi.orders_per_minute",
    ]
    assert incident.service == "postgres"


def test_service_is_the_root_causes_own_service_label() -> None:
    builder = IncidentBuilder()
    labels = {"service": "queue_job", "channel": "root.stock_sync"}
    builder.observe(anomaly(0, "kpi.stock_sync_delay_seconds", "up", 900.0, 60.0))

    events = builder.observe(anomaly(20, "queue.depth", "up", 5000.0, 40.0, labels))

    root = events[0].incident.root_cause
    assert root is not None and root.node == "queue"
    assert events[0].incident.service == "queue_job"


def test_unrelated_services_open_separate_incidents() -> None:
    builder = IncidentBuilder()

    redis = builder.observe(anomaly(0, "redis.hit_ratio", "down"))
    traefik = builder.observe(anomaly(10, "traefik.tls_cert_expiry_days", "down"))

    assert redis[0].kind == traefik[0].kind == "opened"
    assert redis[0].incident.incident_id != traefik[0].incident.incident_id
    assert len(builder.open_incidents(T0 + 10)) == 2


def test_anomaly_after_the_window_opens_a_new_incident() -> None:
    builder = IncidentBuilder(window=60, quiet_period=600)

    first = builder.observe(anomaly(0, "redis.hit_ratio", "down"))
    later = builder.observe(anomaly(120, "redis.evicted_keys_per_second"))

    assert later[-1].kind == "opened"
    assert later[-1].incident.incident_id != first[0].incident.incident_id


def test_root_cause_is_the_most_upstream_anomaly_even_when_it_shows_later() -> None:
    builder = IncidentBuilder()
    builder.observe(anomaly(0, "odoo.worker_busy_ratio"))
    builder.observe(anomaly(5, "kpi.checkout_latency_p95_seconds", "up", 3.0, 0.8))

    events = builder.observe(anomaly(40, "postgres.locks_waiting"))

    root = events[-1].incident.root_cause
    assert root is not None and root.signal == "postgres.locks_waiting"
    assert events[-1].incident.service == "postgres"


def test_among_equally_upstream_anomalies_the_earliest_is_the_root_cause() -> None:
    builder = IncidentBuilder()
    builder.observe(anomaly(0, "odoo.worker_busy_ratio"))
    builder.observe(anomaly(10, "redis.latency_seconds"))

    events = builder.observe(anomaly(20, "postgres.locks_waiting"))

    root = events[-1].incident.root_cause
    assert root is not None and root.node == "redis"


def test_a_quiet_upstream_finding_yields_the_root_cause_to_an_active_one() -> None:
    # A KPI keeps the incident open while the Redis anomaly that opened it goes quiet;
    # the Traefik latency that follows is what is anomalous now.
    builder = IncidentBuilder(window=300.0)
    builder.observe(anomaly(0, "redis.used_memory_ratio"))
    for minute in range(1, 12):
        builder.observe(anomaly(60 * minute, "kpi.revenue_per_minute", "up", 130.0, 100.0))

    events = builder.observe(anomaly(700, "traefik.latency_p95_seconds"))

    incident = events[-1].incident
    assert [f.signal for f in incident.findings if not f.active] == ["redis.used_memory_ratio"]
    assert incident.root_cause is not None
    assert incident.root_cause.signal == "traefik.latency_p95_seconds"
    resolved = builder.advance(T0 + 10_000)[-1].incident
    assert resolved.root_cause is not None
    assert resolved.root_cause.signal == "redis.used_memory_ratio"  # none active: upstream


def test_kpi_only_incident_has_no_root_cause_and_records_the_impact() -> None:
    builder = IncidentBuilder()

    events = builder.observe(anomaly(0, "kpi.orders_per_minute", "down", 16.0, 40.0))

    incident = events[0].incident
    assert incident.root_cause is None
    assert incident.service == "odoo"
    [impact] = incident.kpi_impact
    assert impact.direction == "down"
    assert impact.change == pytest.approx(-0.6)


def test_incident_resolves_only_after_the_quiet_period() -> None:
    builder = IncidentBuilder(window=60, quiet_period=300)
    opened = builder.observe(anomaly(0, "redis.hit_ratio", "down"))

    early = builder.advance(T0 + 299)
    late = builder.advance(T0 + 300)

    assert all(event.kind != "resolved" for event in early)
    assert kinds(late) == [("resolved", opened[0].incident.incident_id)]
    assert late[0].incident.resolved_at == T0 + 300
    assert builder.open_incidents(T0 + 300) == []


def test_recovered_kpi_leaves_the_impact_before_the_incident_resolves() -> None:
    builder = IncidentBuilder(window=60, quiet_period=600)
    builder.observe(anomaly(0, "kpi.orders_per_minute", "down", 10.0, 40.0))
    builder.observe(anomaly(0, "postgres.locks_waiting"))
    builder.observe(anomaly(50, "postgres.locks_waiting"))

    assert builder.advance(T0 + 60) == []
    events = builder.advance(T0 + 61)

    assert [event.kind for event in events] == ["updated"]
    assert events[0].incident.kpi_impact == ()
    assert [f.signal for f in events[0].incident.active_findings] == ["postgres.locks_waiting"]


def test_a_new_reading_of_the_same_series_is_an_update_with_the_same_signature() -> None:
    builder = IncidentBuilder()
    [opened] = builder.observe(anomaly(0, "redis.hit_ratio", "down", 0.5, 0.9))

    [again] = builder.observe(anomaly(15, "redis.hit_ratio", "down", 0.4, 0.9))

    assert again.kind == "updated"
    assert again.incident.signature == opened.incident.signature
    assert again.incident.findings[0].count == 2
    assert again.incident.findings[0].observed == 0.4


def test_a_late_reading_that_changes_nothing_emits_no_update() -> None:
    builder = IncidentBuilder()
    builder.observe(anomaly(10, "redis.hit_ratio", "down", 0.4, 0.9))

    late = builder.observe(anomaly(5, "redis.hit_ratio", "down", 0.7, 0.9))

    assert late == []


def test_late_anomaly_widens_the_span_without_overwriting_the_newest_reading() -> None:
    builder = IncidentBuilder()
    builder.observe(anomaly(10, "redis.hit_ratio", "down", 0.4, 0.9))

    builder.observe(anomaly(5, "redis.hit_ratio", "down", 0.7, 0.9))

    [incident] = builder.open_incidents(T0 + 10)
    assert incident.findings[0].first_seen == T0 + 5
    assert incident.findings[0].observed == 0.4


def test_incident_ids_are_stable_across_updates_and_replays() -> None:
    stream = [
        anomaly(0, "postgres.replication_lag_seconds", "up", 900.0, 2.0),
        anomaly(20, "kpi.stock_sync_delay_seconds", "up", 1200.0, 60.0),
        anomaly(25, "traefik.error_ratio", "up", 0.2, 0.01),
        anomaly(2000, "redis.hit_ratio", "down", 0.3, 0.9),
    ]

    first = IncidentBuilder().observe_all(stream)
    second = IncidentBuilder().observe_all(reversed(stream))

    assert kinds(first) == kinds(second)
    ids = {event.incident.incident_id for event in first}
    assert len(ids) == 3


def test_backup_anomaly_joins_the_replica_incident_it_protects() -> None:
    builder = IncidentBuilder()
    builder.observe(anomaly(0, "postgres.replication_lag_seconds", "up", 900.0, 2.0))

    events = builder.observe(anomaly(30, "backup.last_success_age_seconds", "up", 2e5, 4e4))

    assert [event.kind for event in events] == ["updated"]
    assert {f.node for f in events[0].incident.findings} == {"postgres_replica", "backup"}


def test_topology_from_config_changes_the_grouping() -> None:
    # In this estate Odoo keeps sessions in Postgres only: Redis is not a dependency.
    topology = Topology.from_dict({"depends_on": {
        "kpi.orders_per_minute": ["odoo"], "odoo": ["postgres"], "postgres": [], "redis": [],
    }})
    builder = IncidentBuilder(topology)
    builder.observe(anomaly(0, "redis.hit_ratio", "down"))

    events = builder.observe(anomaly(5, "kpi.orders_per_minute", "down", 10.0, 40.0))

    assert events[0].kind == "opened"
    assert topology.downstream_kpis("redis") == frozenset()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"depends_on": {"odoo": ["postgres"], "postgres": ["odoo"]}}, "cycle"),
        ({"depends_on": {"odoo": ["postgress"]}}, "not declared"),
        ({"edges": {}}, "unknown keys"),
    ],
)
def test_invalid_topology_is_refused_with_the_fix(config: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Topology.from_dict(config)


def test_default_topology_puts_kpis_downstream_of_their_services() -> None:
    topology = Topology()

    assert "kpi.orders_per_minute" in topology.downstream_kpis("postgres")
    assert "kpi.stock_sync_delay_seconds" in topology.downstream_kpis("postgres_replica")
    assert "kpi.stock_sync_delay_seconds" not in topology.downstream_kpis("traefik")
    assert topology.node_of("postgres.replica_lag_seconds", {"service": "postgres"}) == (
        "postgres_replica"
    )
    assert topology.node_of("queue.depth", {"channel": "root.stock"}) == "queue"


def test_invalid_durations_are_refused() -> None:
    with pytest.raises(ConfigError, match="quiet_period"):
        IncidentBuilder(quiet_period=0)


def test_traefik_router_series_blame_traefik_not_their_backend_label() -> None:
    builder = IncidentBuilder()
    router = {"service": "odoo@file", "router": "webshop@file", "instance": "traefik-1:8080"}

    events = builder.observe(anomaly(0, "traefik.latency_p95_seconds", "up", 3.0, 0.4, router))

    incident = events[0].incident
    assert incident.root_cause is not None and incident.root_cause.node == "traefik_routes"
    assert incident.service == "traefik"


def test_cache_misses_and_the_route_latency_they_cause_form_one_incident() -> None:
    builder = IncidentBuilder()
    router = {"service": "odoo@file", "router": "webshop@file"}

    builder.observe(anomaly(0, "redis.hit_ratio", "down", 0.7, 0.96, {"service": "redis"}))
    events = builder.observe(anomaly(60, "traefik.latency_p95_seconds", "up", 3.0, 0.4, router))

    assert [event.kind for event in events] == ["updated"]
    assert events[0].incident.service == "redis"


def test_a_new_series_joins_the_related_incident_with_the_strongest_evidence() -> None:
    builder = IncidentBuilder()
    queue = {"service": "queue", "channel": "root.stock_sync"}
    replica = {"service": "postgres", "replica": "pg-replica-1"}

    [blip] = builder.observe(anomaly(0, "queue.depth", "up", 9.0, 1.3, queue))
    behind = anomaly(5, "postgres.replica_lag_seconds", "up", 13.0, 0.1, replica)
    [lag] = builder.observe(behind)
    [stock] = builder.observe(anomaly(10, "kpi.stock_sync_delay_seconds", "up", 300.0, 40.0))

    assert blip.incident.incident_id != lag.incident.incident_id
    assert stock.incident.incident_id == lag.incident.incident_id
    assert stock.incident.service == "postgres"


def test_a_series_stays_in_the_incident_it_joined() -> None:
    builder = IncidentBuilder()
    queue = {"service": "queue", "channel": "root.stock_sync"}
    replica = {"service": "postgres", "replica": "pg-replica-1"}
    builder.observe(anomaly(0, "queue.depth", "up", 9.0, 1.3, queue))
    [stock] = builder.observe(anomaly(5, "kpi.stock_sync_delay_seconds", "up", 300.0, 40.0))
    builder.observe(anomaly(10, "postgres.replica_lag_seconds", "up", 13.0, 0.1, replica))

    builder.observe(anomaly(20, "kpi.stock_sync_delay_seconds", "up", 400.0, 40.0))

    owner = next(
        incident
        for incident in builder.open_incidents(T0 + 20)
        if any(f.signal.startswith("kpi.") for f in incident.findings)
    )
    assert owner.incident_id == stock.incident.incident_id
    assert [f.count for f in owner.findings if f.signal.startswith("kpi.")] == [2]


def test_a_certificate_countdown_does_not_gather_kpi_noise() -> None:
    builder = IncidentBuilder()
    cert = {"service": "traefik", "domain": "shop.acme.example", "serial": "3a9f1c"}

    countdown = anomaly(0, "traefik.tls_cert_expiry_days", "down", 12.0, 50.0, cert)
    [expiring] = builder.observe(countdown)
    [orders] = builder.observe(anomaly(30, "kpi.revenue_per_minute", "down", 0.0, 16.0))

    assert orders.kind == "opened"
    assert expiring.incident.service == "traefik"
    assert Topology().related("tls_certificates", "traefik")


def _firing(signal: str, labels: dict[str, str], detector: str, start: float, end: float,
            observed: float, expected: float) -> list[Anomaly]:
    """A rule's anomalies: one a minute while its condition holds."""
    return [
        anomaly(ts, signal, "up", observed, expected, labels, detector)
        for ts in range(int(start), int(end), 60)
    ]


def test_a_control_failing_for_hours_does_not_adopt_the_afternoons_anomalies() -> None:
    builder = IncidentBuilder()
    backup = {"service": "backup", "stanza": "main", "backup_type": "diff"}
    replica = {"service": "postgres", "replica": "pg-replica-1"}
    stale = _firing("backup.last_success_age_seconds", backup, "threshold", 0, 6 * 3600,
                    9e4, 8.64e4)
    lag = anomaly(4 * 3600 + 30, "postgres.replica_lag_bytes", "up", 5e6, 1e5, replica)
    stock = anomaly(4 * 3600 + 90, "kpi.stock_sync_delay_seconds", "up", 300.0, 40.0)

    events = builder.observe_all([*stale, lag, stock])

    incidents = {e.incident.incident_id: e.incident for e in events}
    assert len(incidents) == 2
    control = next(i for i in incidents.values() if i.service == "backup")
    assert {f.signal for f in control.findings} == {"backup.last_success_age_seconds"}
    assert control.findings[0].count == len(stale)  # still firing: the incident stays open
    [later] = [i for i in incidents.values() if i.service == "postgres"]
    assert {f.signal for f in later.findings} == {
        "postgres.replica_lag_bytes", "kpi.stock_sync_delay_seconds"
    }


def test_a_control_at_its_onset_still_joins_what_it_protects() -> None:
    builder = IncidentBuilder()
    backup = {"service": "backup", "stanza": "main", "backup_type": "diff"}
    stale = _firing("backup.last_success_age_seconds", backup, "threshold", 0, 600,
                    9e4, 8.64e4)
    lag = anomaly(120, "postgres.replication_lag_seconds", "up", 900.0, 2.0)

    events = builder.observe_all([*stale, lag])

    assert len({e.incident.incident_id for e in events}) == 1


def test_a_condition_holding_takes_the_kpis_that_depend_on_it() -> None:
    builder = IncidentBuilder()
    routes = {"service": "odoo@file", "router": "webshop@file"}
    burning = _firing("traefik.server_error_ratio", routes, "burn_rate", 0, 3600, 0.2, 0.001)
    revenue = anomaly(1800, "kpi.revenue_per_minute", "down", 10.0, 80.0,
                      {"service": "odoo", "sales_channel": "website"}, "revenue")

    events = builder.observe_all([*burning, revenue])

    [incident] = {e.incident.incident_id: e.incident for e in events}.values()
    assert {f.signal for f in incident.findings} == {
        "traefik.server_error_ratio", "kpi.revenue_per_minute"
    }
    assert incident.service == "traefik"


def test_a_rule_firing_again_after_clearing_is_fresh_evidence() -> None:
    builder = IncidentBuilder()
    backup = {"service": "backup", "stanza": "main", "backup_type": "diff"}
    standby = {"service": "postgres", "instance": "pg-replica-2:5432"}
    # The standby not streaming holds the incident open while the backup rule clears.
    holding = _firing("postgres.wal_receiver_streaming", standby, "threshold", 0, 3000,
                      0.0, 0.5)
    first = _firing("backup.last_success_age_seconds", backup, "threshold", 60, 600,
                    9e4, 8.64e4)
    again = _firing("backup.last_success_age_seconds", backup, "threshold", 1800, 2400,
                    9e4, 8.64e4)
    # The primary is related to the backup (a backup needs it), not fed by the standby.
    primary = anomaly(1830, "postgres.up", "down", 0.0, 1.0, {"service": "postgres"})

    events = builder.observe_all([*holding, *first, *again, primary])

    assert len({e.incident.incident_id for e in events}) == 1
    [finding] = [f for f in events[-1].incident.findings if f.signal.startswith("backup.")]
    assert finding.fresh_seen == T0 + 1800


def _reminded(signal: str, labels: dict[str, str], until: float) -> list[Anomaly]:
    """An ensemble event: its onset at 0, then a reminder every two minutes until ``until``."""
    onset = anomaly(0, signal, "up", 5400.0, 900.0, labels)
    return [onset, *(replace(anomaly(ts, signal, "up", 5400.0, 900.0, labels),
                             extra={REMINDER: 1.0}) for ts in range(120, int(until), 120))]


def test_an_event_reminded_of_for_hours_is_fresh_evidence_only_at_its_onset() -> None:
    backup = {"service": "backup", "stanza": "main"}
    replica = {"service": "postgres", "replica": "pg-replica-1"}
    slow = _reminded("backup.duration_seconds", backup, 6 * 3600)
    lag = anomaly(4 * 3600 + 30, "postgres.replica_lag_bytes", "up", 5e6, 1e5, replica)
    unflagged = [replace(a, extra={}) for a in slow]

    reminded = IncidentBuilder().observe_all([*slow, lag])
    fresh = IncidentBuilder().observe_all([*unflagged, lag])

    incidents = {e.incident.incident_id: e.incident for e in reminded}
    assert len(incidents) == 2  # the backup event held open, the lag on its own
    held = next(i for i in incidents.values() if i.service == "backup")
    assert [(f.count, f.fresh_seen) for f in held.findings] == [(len(slow), T0)]
    assert len({e.incident.incident_id for e in fresh}) == 1  # fresh readings adopt it
