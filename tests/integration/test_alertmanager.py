"""alerts/alertmanager.yml against the real Alertmanager: config, routing, inhibition."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from alerts.incidents import IncidentBuilder
from alerts.notifier import AlertmanagerNotifier
from alerts.tiers import AlertEvent, TierTracker
from tests.services._support import INSTALL_HINT, require_binary
from tests.services.alertmanager import CONFIG, AlertmanagerServer, rewrite_for_test
from tests.unit.test_incidents import anomaly
from tillwatch.anomaly import Anomaly

pytestmark = pytest.mark.integration

AMTOOL_INSTALL = f"apt-get install prometheus-alertmanager (ships amtool), or {INSTALL_HINT}"
PROMTOOL_INSTALL = f"apt-get install prometheus (ships promtool), or {INSTALL_HINT}"
RULES = CONFIG.parent / "rules.yml"


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require_binary("amtool", AMTOOL_INSTALL)
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=30)


def notifier_for(server: AlertmanagerServer, tmp_path: Path) -> AlertmanagerNotifier:
    return AlertmanagerNotifier(
        server.url,
        journal=tmp_path / "alerts.jsonl",
        runbook_base_url="https://runbooks.example.org/tillwatch",
        dashboard_base_url="https://grafana.example.org/d/tillwatch-incident",
    )


def events_of(*anomalies: Anomaly) -> list[AlertEvent]:
    builder, tracker = IncidentBuilder(), TierTracker()
    return tracker.apply_all(builder.observe_all(anomalies))


def test_shipped_config_passes_amtool_check_config() -> None:
    checked = amtool("check-config", str(CONFIG))

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 inhibit rules" in checked.stdout
    assert "3 receivers" in checked.stdout


def test_test_rewrite_keeps_a_valid_config(tmp_path: Path) -> None:
    rewritten = tmp_path / "alertmanager.yml"
    rewritten.write_text(rewrite_for_test(CONFIG.read_text(), "http://127.0.0.1:9"))

    checked = amtool("check-config", str(rewritten))

    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["tier=page", "service=postgres"], "page"),
        (["tier=ticket", "service=redis"], "ticket"),
        (["tier=info", "service=postgres"], "info"),
        (["alertname=FromAnotherRuleFile"], "ticket"),
    ],
)
def test_routing_tree_sends_each_tier_to_its_receiver(labels: list[str], receiver: str) -> None:
    routed = amtool("config", "routes", "test", f"--config.file={CONFIG}", *labels)

    assert routed.returncode == 0, routed.stderr
    assert routed.stdout.split() == [receiver]


def test_page_reaches_the_page_receiver(
    alertmanager: AlertmanagerServer, tmp_path: Path
) -> None:
    notifier = notifier_for(alertmanager, tmp_path)
    [opened, page] = events_of(
        anomaly(0, "postgres.locks_waiting", "up", 40.0, 2.0, {"service": "postgres"}),
        anomaly(30, "kpi.orders_per_minute", "down", 12.0, 40.0, {"sales_channel": "web"}),
    )

    notifier.notify(opened)
    notifier.notify(page)
    incident_id = page.incident.incident_id
    got = alertmanager.inbox.wait_for(
        lambda n: n.receiver == "page" and n.alerts[0]["labels"]["incident_id"] == incident_id,
        "the page notification",
    )

    [alert] = got.alerts
    notes = alert["annotations"]
    assert alert["labels"]["tier"] == "page"
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["service"] == "postgres"
    assert "kpi.orders_per_minute{sales_channel=web} down 70%" in notes["kpi_impact"]
    assert notes["suspected_cause"].startswith("postgres: postgres.locks_waiting up")
    assert notes["summary"].startswith("[page (was ticket)] postgres: a business KPI is hurt")
    assert notes["runbook_url"].endswith("/businesskpihurt")
    assert f"var-incident_id={incident_id}" in notes["dashboard_url"]
    notifier.close()


def test_page_inhibits_tickets_of_the_same_service_only(
    alertmanager: AlertmanagerServer, tmp_path: Path
) -> None:
    notifier = notifier_for(alertmanager, tmp_path)
    [page] = events_of(anomaly(0, "kpi.orders_per_minute", "down", 12.0, 40.0))
    [odoo_ticket] = events_of(anomaly(900, "odoo.worker_busy_ratio", "up", 0.97, 0.4))
    [redis_ticket] = events_of(anomaly(900, "redis.hit_ratio", "down", 0.3, 0.95))
    assert page.incident.service == odoo_ticket.incident.service == "odoo"

    for event in (page, odoo_ticket, redis_ticket):
        notifier.notify(event)
    alertmanager.inbox.wait_for(
        lambda n: n.receiver == "ticket" and n.alerts[0]["labels"]["service"] == "redis",
        "the redis ticket",
    )

    [odoo] = alertmanager.alerts('tier="ticket"', 'service="odoo"')
    assert odoo["status"]["state"] == "suppressed"
    assert odoo["status"]["inhibitedBy"], odoo["status"]
    [redis] = alertmanager.alerts('service="redis"')
    assert redis["status"]["state"] == "active"
    tickets = alertmanager.inbox.notifications("ticket")
    assert all(n.alerts[0]["labels"]["service"] != "odoo" for n in tickets)
    notifier.close()


def test_resolved_incident_resolves_at_the_receiver(
    alertmanager: AlertmanagerServer, tmp_path: Path
) -> None:
    notifier = notifier_for(alertmanager, tmp_path)
    builder, tracker = IncidentBuilder(quiet_period=600), TierTracker()
    hurt = anomaly(0, "kpi.stock_sync_delay_seconds", "up", 1800.0, 60.0)
    [opened] = tracker.apply_all(builder.observe(hurt))
    notifier.notify(opened)
    alertmanager.inbox.wait_for(lambda n: n.status == "firing", "the firing page")

    [resolved] = tracker.apply_all(builder.advance(hurt.ts + 600))
    notifier.notify(resolved)

    got = alertmanager.inbox.wait_for(lambda n: n.status == "resolved", "the resolution")
    assert got.receiver == "page"
    assert got.alerts[0]["labels"]["incident_id"] == opened.incident.incident_id
    assert got.alerts[0]["annotations"]["summary"].startswith("[resolved] queue:")
    assert alertmanager.alerts(f'incident_id="{opened.incident.incident_id}"') == []
    notifier.close()


def test_rules_file_passes_promtool(tmp_path: Path) -> None:
    promtool = require_binary("promtool", PROMTOOL_INSTALL)

    checked = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=30
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 3 rules found" in checked.stdout


def test_rules_fire_when_alerts_are_dropped(tmp_path: Path) -> None:
    promtool = require_binary("promtool", PROMTOOL_INSTALL)
    cases = tmp_path / "rules_test.yml"
    cases.write_text(RULES_TEST.replace("RULES", str(RULES)))

    tested = subprocess.run(
        [promtool, "test", "rules", str(cases)], capture_output=True, text=True, timeout=30
    )

    assert tested.returncode == 0, tested.stdout + tested.stderr


DROPPED_NOTE = (
    "The notifier's bounded queue overflowed while Alertmanager was unreachable, or "
    "Alertmanager rejected payloads. Check Alertmanager and the notifier's log."
)
UNREACHABLE_NOTE = (
    "Every POST to /api/v2/alerts failed for 10 minutes. Pages are waiting in the "
    "notifier's queue: check that Alertmanager runs and TILLWATCH_ALERTMANAGER_URL."
)
RULES_TEST = f"""
rule_files: [RULES]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'tillwatch_alerts_dropped_total{{reason="queue_full",job="tillwatch"}}'
        values: '0 0 3 3 3 3 3 3'
      - series: 'tillwatch_alertmanager_posts_total{{outcome="failed",job="tillwatch"}}'
        values: '0+2x20'
      - series: 'tillwatch_alertmanager_posts_total{{outcome="ok",job="tillwatch"}}'
        values: '0x20'
    alert_rule_test:
      - eval_time: 1m
        alertname: TillwatchAlertsDropped
        exp_alerts: []
      - eval_time: 3m
        alertname: TillwatchAlertsDropped
        exp_alerts:
          - exp_labels: {{tier: ticket, severity: warning, service: tillwatch,
                         reason: queue_full, job: tillwatch}}
            exp_annotations:
              summary: "tillwatch dropped alerts undelivered (queue_full)"
              description: "{DROPPED_NOTE}"
      - eval_time: 5m
        alertname: TillwatchAlertmanagerUnreachable
        exp_alerts: []
      - eval_time: 15m
        alertname: TillwatchAlertmanagerUnreachable
        exp_alerts:
          - exp_labels: {{tier: ticket, severity: warning, service: tillwatch, job: tillwatch}}
            exp_annotations:
              summary: "tillwatch cannot reach Alertmanager; alerts are queued, not delivered"
              description: "{UNREACHABLE_NOTE}"
"""
