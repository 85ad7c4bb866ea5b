"""The simulated estate speaks exactly like the registered collectors: every signal it
emits is declared by one of them, with the label keys that collector gives it."""

from __future__ import annotations

import pytest

from collectors.registry import COLLECTORS
from estate.simulator import Estate, Simulator, drivers, layout

# Label keys each collector adds to a reading, beyond its target's ``service`` and
# ``instance``; taken from the collectors' code and their tables in docs/collectors*.md.
# A signal not listed carries the target labels only.
READING_LABELS: dict[str, set[frozenset[str]]] = {
    "kpi.orders_per_minute": {
        frozenset({"company", "sales_channel"}),
        frozenset({"company", "sales_channel", "store"}),
    },
    "kpi.revenue_per_minute": {
        frozenset({"company", "sales_channel"}),
        frozenset({"company", "sales_channel", "store"}),
    },
    "kpi.stock_sync_delay_seconds": {frozenset({"company"})},
    "traefik.requests_per_second": {frozenset({"router", "service"})},
    "traefik.server_error_ratio": {frozenset({"router", "service"})},
    "traefik.slow_request_ratio": {frozenset({"router", "service", "le"})},
    "traefik.latency_p95_seconds": {frozenset({"router", "service"})},
    "traefik.path_requests_per_second": {frozenset({"path"})},
    "traefik.path_latency_p95_seconds": {frozenset({"path"})},
    "traefik.tls_cert_expiry_days": {frozenset({"domain", "serial"})},
    "postgres.replica_lag_seconds": {frozenset({"replica"})},
    "postgres.replica_lag_bytes": {frozenset({"replica"})},
    "postgres.replica_connected": {frozenset({"replica"})},
    "queue.depth": {frozenset({"channel", "state"})},
    "queue.oldest_pending_age_seconds": {frozenset({"channel"})},
    "backup.last_success_age_seconds": {frozenset({"stanza", "backup_type"})},
    "backup.stanza_status": {frozenset({"stanza"})},
    "backup.stale": {frozenset({"stanza"})},
}
TARGET_LABELS = frozenset({"service", "instance"})
QUEUE_STATES = {"wait_dependencies", "pending", "enqueued", "started"}


def _declared() -> dict[str, str]:
    """Every signal a registered collector declares, mapped to that collector's source."""
    return {
        name: source
        for source, collector in COLLECTORS.items()
        for name in collector.declared()
    }


def test_every_emitted_signal_is_declared_by_a_registered_collector():
    declared = _declared()

    undeclared = sorted(set(layout(Estate())) - set(declared))
    assert not undeclared, f"no registered collector declares {undeclared}"


def test_every_emitted_series_has_the_label_keys_its_collector_gives():
    for signal, label_sets in layout(Estate()).items():
        allowed = {TARGET_LABELS | keys for keys in READING_LABELS.get(signal, {frozenset()})}
        for labels in label_sets:
            assert frozenset(labels) in allowed, (signal, labels)


def test_samples_of_a_run_use_only_the_layout():
    emitted = {series.signal for series in Simulator(seed=1).series}

    assert emitted == set(layout(Estate()))
    assert not emitted & set(drivers(Estate())), "a driver must never be emitted"


def test_the_check_catches_a_signal_no_collector_declares():
    declared = _declared()

    # The simulator's old names, from before it followed the collectors.
    for stale in ("traefik.request_rate", "traefik.error_ratio_5xx", "backup.status_code"):
        assert stale not in declared


@pytest.mark.parametrize(
    ("signal", "value_of", "expected"),
    [
        ("queue.depth", "state", QUEUE_STATES),
        ("backup.last_success_age_seconds", "backup_type", {"full", "diff"}),
        ("postgres.replica_lag_seconds", "replica", {"pg-replica-1", "pg-replica-2"}),
    ],
)
def test_label_values_are_those_the_collectors_report(signal, value_of, expected):
    values = {labels[value_of] for labels in layout(Estate())[signal]}

    assert values == expected


def test_each_series_carries_its_collectors_service_label():
    services = {"kpi": "odoo", "odoo": "odoo", "redis": "redis", "postgres": "postgres"}
    services |= {"queue": "queue", "backup": "backup"}

    for signal, label_sets in layout(Estate()).items():
        source = signal.split(".", 1)[0]
        if source in services:
            assert {labels["service"] for labels in label_sets} == {services[source]}, signal
