"""The notifier against a real Alertmanager: re-sends, resolution, outages, the journal."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from alerts.incidents import IncidentBuilder
from alerts.notifier import AlertmanagerNotifier
from alerts.tiers import AlertEvent, TierTracker
from tests.services.alertmanager import AlertmanagerServer, StartAlertmanager
from tests.unit.test_incidents import anomaly
from tillwatch.anomaly import Anomaly
from tillwatch.errors import ConfigError

pytestmark = pytest.mark.integration


class FakeClock:
    """A clock the test moves by hand, starting at the real now so Alertmanager agrees."""

    def __init__(self) -> None:
        self.now = datetime.now().timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_notifier(
    url: str | None, tmp_path: Path, clock: FakeClock, **options: float
) -> AlertmanagerNotifier:
    return AlertmanagerNotifier(
        url,
        journal=tmp_path / "alerts.jsonl",
        runbook_base_url="https://runbooks.example.org/tillwatch",
        dashboard_base_url="https://grafana.example.org/d/tillwatch-incident?orgId=1",
        clock=clock,
        **options,  # type: ignore[arg-type]
    )


def opened(*anomalies: Anomaly) -> AlertEvent:
    [event] = TierTracker().apply_all(IncidentBuilder().observe_all(anomalies))
    return event


def journal(tmp_path: Path) -> list[dict]:
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def ends_at(alert: dict) -> float:
    return datetime.fromisoformat(alert["endsAt"].replace("Z", "+00:00")).timestamp()


PAGE = anomaly(0, "kpi.orders_per_minute", "down", 10.0, 40.0)
TICKET = anomaly(0, "redis.hit_ratio", "down", 0.3, 0.95)
INFO = anomaly(0, "postgres.disk_free_bytes", "down", 5e9, 4e10, detector="trend")


def test_outage_is_buffered_retried_with_backoff_and_delivered_after(
    alertmanager_factory: StartAlertmanager, tmp_path: Path
) -> None:
    server = alertmanager_factory(start=False)
    clock = FakeClock()
    notifier = make_notifier(server.url, tmp_path, clock, backoff_initial=1, backoff_max=4)
    builder, tracker = IncidentBuilder(quiet_period=60), TierTracker()
    short = anomaly(1, "traefik.error_ratio", "up", 0.2, 0.01)
    events = [opened(PAGE), opened(TICKET), opened(INFO)]
    events += tracker.apply_all(builder.observe(short) + builder.advance(short.ts + 60))

    for event in events:
        notifier.notify(event)
    waits = []
    for _ in range(4):
        waits.append(notifier.retry_at - clock.now)
        assert notifier.flush() is False  # still inside the backoff: no new attempt
        clock.advance(waits[-1])
        notifier.flush()

    assert waits == [1, 2, 4, 4]
    assert notifier.undelivered == 4
    server.start()
    clock.advance(notifier.retry_at - clock.now)
    assert notifier.flush() is True
    active = server.alerts()
    resolved = {e.incident.incident_id for e in events if e.status == "resolved"}
    assert {a["labels"]["incident_id"] for a in active} == {
        e.incident.incident_id for e in events if e.incident.incident_id not in resolved
    }
    assert len(active) == 3
    assert {a["labels"]["tier"] for a in active} == {"page", "ticket", "info"}
    assert notifier.undelivered == 0
    server.inbox.wait_for(lambda n: n.receiver == "page", "the page delivered after the outage")
    notifier.close()


def test_every_event_is_journaled_whether_or_not_it_was_delivered(
    alertmanager_factory: StartAlertmanager, tmp_path: Path
) -> None:
    server = alertmanager_factory(start=False)
    notifier = make_notifier(server.url, tmp_path, FakeClock())
    events = [opened(PAGE), opened(TICKET)]

    for event in events:
        notifier.notify(event)

    records = journal(tmp_path)
    assert [r["incident"]["incident_id"] for r in records] == [
        e.incident.incident_id for e in events
    ]
    assert [r["labels"]["tier"] for r in records] == ["page", "ticket"]
    assert all(r["status"] == "firing" and r["annotations"]["summary"] for r in records)
    notifier.close()


def test_firing_alert_is_resent_before_it_expires(
    alertmanager: AlertmanagerServer, tmp_path: Path
) -> None:
    clock = FakeClock()
    notifier = make_notifier(
        alertmanager.url, tmp_path, clock, resend_interval=60, expiry_margin=240
    )
    notifier.notify(opened(PAGE))
    [first] = alertmanager.alerts()
    posts = metric("tillwatch_alertmanager_posts_total", outcome="ok")

    clock.advance(59)
    notifier.flush()
    unchanged = metric("tillwatch_alertmanager_posts_total", outcome="ok")
    clock.advance(1)
    notifier.flush()

    [again] = alertmanager.alerts()
    assert ends_at(first) == pytest.approx(clock.now - 60 + 240, abs=0.01)
    assert ends_at(again) == pytest.approx(clock.now + 240, abs=0.01)
    assert unchanged == posts
    assert metric("tillwatch_alertmanager_posts_total", outcome="ok") == posts + 1
    notifier.close()


def test_resolved_alert_is_resent_for_a_while_then_forgotten(
    alertmanager: AlertmanagerServer, tmp_path: Path
) -> None:
    clock = FakeClock()
    notifier = make_notifier(alertmanager.url, tmp_path, clock, resolved_resend_for=300)
    builder, tracker = IncidentBuilder(quiet_period=60), TierTracker()
    [firing, resolved] = tracker.apply_all(
        builder.observe(TICKET) + builder.advance(TICKET.ts + 60)
    )
    notifier.notify(firing)
    notifier.notify(resolved)
    posts = metric("tillwatch_alertmanager_posts_total", outcome="ok")

    clock.advance(60)
    notifier.flush()
    kept = notifier.pending
    clock.advance(240)
    notifier.flush()

    assert kept == 1
    assert metric("tillwatch_alertmanager_posts_total", outcome="ok") == posts + 1
    assert notifier.pending == 0
    assert alertmanager.alerts() == []
    notifier.close()


def test_tier_change_resolves_the_alert_under_the_old_labels(
    alertmanager: AlertmanagerServer, tmp_path: Path
) -> None:
    notifier = make_notifier(alertmanager.url, tmp_path, FakeClock())
    builder, tracker = IncidentBuilder(), TierTracker()
    [ticket] = tracker.apply_all(builder.observe(anomaly(0, "odoo.worker_busy_ratio")))
    [page] = tracker.apply_all(builder.observe(PAGE))

    notifier.notify(ticket)
    notifier.notify(page)

    active = alertmanager.alerts(f'incident_id="{page.incident.incident_id}"')
    assert [(a["labels"]["tier"], a["labels"]["alertname"]) for a in active] == [
        ("page", "BusinessKpiHurt")
    ]
    assert notifier.pending == 2  # the ticket's resolution is still being re-sent
    notifier.close()


def test_full_queue_drops_the_oldest_and_counts_it(
    alertmanager_factory: StartAlertmanager, tmp_path: Path
) -> None:
    server = alertmanager_factory(start=False)
    clock = FakeClock()
    notifier = make_notifier(server.url, tmp_path, clock, max_alerts=2)
    events = [opened(PAGE), opened(TICKET), opened(INFO)]
    dropped = metric("tillwatch_alerts_dropped_total", reason="queue_full")

    for event in events:
        notifier.notify(event)
        clock.advance(1)
    server.start()
    clock.advance(notifier.retry_at - clock.now)
    notifier.flush()

    assert metric("tillwatch_alerts_dropped_total", reason="queue_full") == dropped + 1
    delivered = {a["labels"]["incident_id"] for a in server.alerts()}
    assert delivered == {e.incident.incident_id for e in events[1:]}
    assert len(journal(tmp_path)) == 3
    notifier.close()


def test_without_alertmanager_the_journal_and_log_carry_the_alerts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = make_notifier(None, tmp_path, FakeClock())
    event = opened(PAGE)

    with caplog.at_level(logging.INFO, logger="alerts.notifier"):
        notifier.notify(event)

    assert notifier.flush() is True
    assert notifier.pending == 0
    [record] = journal(tmp_path)
    assert record["labels"]["incident_id"] == event.incident.incident_id
    [line] = caplog.records
    assert event.incident.incident_id in line.getMessage()
    assert "tier=page" in line.getMessage()
    notifier.close()


def test_resend_interval_must_be_shorter_than_the_expiry_margin(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="shorter than expiry_margin"):
        make_notifier(None, tmp_path, FakeClock(), resend_interval=300, expiry_margin=240)
