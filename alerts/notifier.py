"""Delivers tiered alert events to Alertmanager (API v2) and to a JSON-lines journal.

Alertmanager forgets an alert whose ``endsAt`` has passed and keeps no state across a
crash, so the notifier owns delivery:

- a firing alert is sent with ``endsAt = now + expiry_margin`` and re-sent every
  ``resend_interval`` (shorter than the margin) until it resolves;
- a resolved alert is sent with ``endsAt`` = the resolution time and re-sent for
  ``resolved_resend_for`` seconds, then forgotten;
- when a POST fails, every due alert stays queued and the next attempt waits an
  exponentially growing backoff; once Alertmanager answers, everything queued goes in
  one POST. The queue is bounded: alerts evicted from it are counted in
  ``tillwatch_alerts_dropped_total``.

Labels and annotations form the contract documented in docs/alerts.md. When an
incident's tier or service changes, its labels change, so the alert under the old
labels is resolved and a new one fires.

Every event is also appended to the journal, with or without Alertmanager. The notifier
is single-threaded: the caller runs :meth:`AlertmanagerNotifier.flush` every few seconds.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests

from alerts.incidents import Finding, Incident, describe
from alerts.tiers import AlertEvent
from tillwatch import telemetry
from tillwatch.errors import ConfigError

log = logging.getLogger(__name__)

Clock = Callable[[], float]
AlertKey = frozenset[tuple[str, str]]


@dataclass(slots=True)
class _Tracked:
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float
    resolved_at: float | None = None
    sent_at: float | None = None


def rfc3339(ts: float) -> str:
    """Return a UTC RFC 3339 timestamp with milliseconds, as Alertmanager expects."""
    moment = datetime.fromtimestamp(ts, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AlertmanagerNotifier:
    """Sends alert events to Alertmanager and journals them.

    Args:
        url: Alertmanager's base URL (``http://host:9093``); None to journal and log only.
        journal: the JSON-lines file every event is appended to.
        runbook_base_url: base of the ``runbook_url`` annotation; the alertname is appended.
        dashboard_base_url: base of the ``dashboard_url`` annotation (a Grafana dashboard).
        clock: the time source, seconds since the epoch.
        resend_interval: seconds between re-sends of an alert.
        expiry_margin: how far ahead of now a firing alert's ``endsAt`` is set.
        resolved_resend_for: seconds a resolved alert keeps being re-sent.
        max_alerts: bound on the alerts kept for delivery.
        backoff_initial: first wait after a failed POST, seconds.
        backoff_max: longest wait between attempts, seconds.
        timeout: HTTP timeout of one POST, seconds.

    Raises:
        ConfigError: when the re-send interval is not shorter than the expiry margin, or
            the queue bound is not positive.
    """

    def __init__(
        self,
        url: str | None,
        *,
        journal: Path,
        runbook_base_url: str,
        dashboard_base_url: str,
        clock: Clock = time.time,
        resend_interval: float = 60.0,
        expiry_margin: float = 240.0,
        resolved_resend_for: float = 300.0,
        max_alerts: int = 1000,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        timeout: float = 5.0,
    ) -> None:
        _check_timings(resend_interval, expiry_margin, max_alerts)
        self.url = url.rstrip("/") if url else None
        self.journal = Path(journal)
        self.runbook_base_url = runbook_base_url.rstrip("/")
        self.dashboard_base_url = dashboard_base_url
        self.clock = clock
        self.resend_interval = resend_interval
        self.expiry_margin = expiry_margin
        self.resolved_resend_for = resolved_resend_for
        self.max_alerts = max_alerts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.failures = 0
        self.retry_at = 0.0
        self._alerts: dict[AlertKey, _Tracked] = {}
        self._by_incident: dict[str, AlertKey] = {}
        self._session = requests.Session()

    def notify(self, event: AlertEvent) -> None:
        """Journal one alert event, queue its Alertmanager alert and try to deliver.

        Args:
            event: the tiered alert event.
        """
        labels, annotations = self.render(event)
        self._journal(event, labels, annotations)
        telemetry.ALERT_EVENTS.labels(event.decision.tier, event.kind).inc()

        if self.url is None:
            log.info(
                "alert %s %s tier=%s incident=%s: %s", event.decision.alertname,
                event.status, event.decision.tier, event.incident.incident_id,
                annotations["summary"],
            )
            return

        self._track(event, labels, annotations)
        self.flush()

    def flush(self) -> bool:
        """Send every due alert, unless a backoff after a failure is still running.

        Returns:
            True when nothing is left to send right now, False when delivery failed or
            is waiting for its backoff.
        """
        now = self.clock()
        self._forget_expired(now)
        if self.url is None or now < self.retry_at:
            return self.url is None

        due = [key for key, tracked in self._alerts.items() if self._is_due(tracked, now)]
        if not due:
            return True
        return self._post(due, now)

    @property
    def pending(self) -> int:
        """Alerts kept for delivery or re-sending."""
        return len(self._alerts)

    @property
    def undelivered(self) -> int:
        """Alerts whose current state Alertmanager has not acknowledged yet."""
        return sum(1 for tracked in self._alerts.values() if tracked.sent_at is None)

    def render(self, event: AlertEvent) -> tuple[dict[str, str], dict[str, str]]:
        """Return the Alertmanager labels and annotations of an event.

        Args:
            event: the tiered alert event.

        Returns:
            ``(labels, annotations)``.
        """
        incident, decision = event.incident, event.decision
        labels = {
            "alertname": decision.alertname,
            "tier": decision.tier,
            "severity": decision.severity,
            "service": incident.service,
            "incident_id": incident.incident_id,
        }
        annotations = {
            "summary": summary(event),
            "suspected_cause": suspected_cause(incident),
            "kpi_impact": kpi_impact(incident),
            "runbook_url": f"{self.runbook_base_url}/{decision.alertname.lower()}",
            "dashboard_url": self._dashboard_url(incident),
        }
        return labels, annotations

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._session.close()

    def _journal(
        self, event: AlertEvent, labels: Mapping[str, str], notes: Mapping[str, str]
    ) -> None:
        record = {**event.to_dict(), "labels": dict(labels), "annotations": dict(notes)}
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        with self.journal.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n")

    def _track(self, event: AlertEvent, labels: dict[str, str], notes: dict[str, str]) -> None:
        now = self.clock()
        incident_id = event.incident.incident_id
        key: AlertKey = frozenset(labels.items())

        # New labels (tier or service moved) make a new alert: end the one they replace.
        previous = self._by_incident.get(incident_id)
        if previous is not None and previous != key and previous in self._alerts:
            self._resolve(self._alerts[previous], now)

        tracked = self._alerts.get(key)
        if tracked is None:
            tracked = _Tracked(labels, notes, starts_at=min(event.ts, now))
            self._admit(key, tracked)
        tracked.annotations = notes
        tracked.sent_at = None
        tracked.resolved_at = None
        if event.status == "resolved":
            self._resolve(tracked, now)
            self._by_incident.pop(incident_id, None)
        else:
            self._by_incident[incident_id] = key

    def _resolve(self, tracked: _Tracked, now: float) -> None:
        tracked.resolved_at = now
        tracked.sent_at = None

    def _admit(self, key: AlertKey, tracked: _Tracked) -> None:
        while len(self._alerts) >= self.max_alerts:
            # Evict resolved alerts before firing ones, and the oldest of each first.
            victim = min(
                self._alerts,
                key=lambda k: (self._alerts[k].resolved_at is None, self._alerts[k].starts_at),
            )
            del self._alerts[victim]
            telemetry.ALERTS_DROPPED.labels("queue_full").inc()
        self._alerts[key] = tracked
        telemetry.ALERTS_PENDING.set(len(self._alerts))

    def _is_due(self, tracked: _Tracked, now: float) -> bool:
        return tracked.sent_at is None or now - tracked.sent_at >= self.resend_interval

    def _forget_expired(self, now: float) -> None:
        expired = [
            key
            for key, tracked in self._alerts.items()
            if tracked.resolved_at is not None
            and tracked.sent_at is not None
            and now - tracked.resolved_at >= self.resolved_resend_for
        ]
        for key in expired:
            del self._alerts[key]
        telemetry.ALERTS_PENDING.set(len(self._alerts))

    def _payload(self, tracked: _Tracked, now: float) -> dict[str, Any]:
        ends_at = now + self.expiry_margin
        if tracked.resolved_at is not None:
            ends_at = tracked.resolved_at
        return {
            "labels": tracked.labels,
            "annotations": tracked.annotations,
            "startsAt": rfc3339(tracked.starts_at),
            "endsAt": rfc3339(ends_at),
            "generatorURL": tracked.annotations["dashboard_url"],
        }

    def _post(self, due: list[AlertKey], now: float) -> bool:
        payload = [self._payload(self._alerts[key], now) for key in due]
        try:
            response = self._session.post(
                f"{self.url}/api/v2/alerts", json=payload, timeout=self.timeout
            )
        except requests.RequestException as error:
            return self._failed(now, f"{type(error).__name__}: {error}")

        if response.status_code >= 500:
            return self._failed(now, f"HTTP {response.status_code}")
        if response.status_code >= 400:
            self._rejected(due, response)
            return False
        self._delivered(due, now)
        return True

    def _delivered(self, due: list[AlertKey], now: float) -> None:
        for key in due:
            self._alerts[key].sent_at = now
        telemetry.ALERTMANAGER_POSTS.labels("ok").inc()
        if self.failures:
            log.info(
                "alertmanager %s reachable again: delivered %d alerts after %d failed attempts",
                self.url, len(due), self.failures,
            )
        else:
            log.debug("alertmanager %s: sent %d alerts", self.url, len(due))
        self.failures = 0
        self.retry_at = 0.0

    def _failed(self, now: float, reason: str) -> bool:
        telemetry.ALERTMANAGER_POSTS.labels("failed").inc()
        self.failures += 1
        backoff = min(self.backoff_max, self.backoff_initial * 2 ** (self.failures - 1))
        self.retry_at = now + backoff
        if self.failures == 1:
            log.warning(
                "alertmanager %s unreachable (%s): keeping %d alerts queued and retrying with "
                "backoff; check that Alertmanager runs and the URL is right",
                self.url, reason, self.undelivered,
            )
        else:
            log.debug("alertmanager %s attempt %d failed: %s", self.url, self.failures, reason)
        return False

    def _rejected(self, due: list[AlertKey], response: requests.Response) -> None:
        # A 4xx means the payload itself is wrong: re-sending it cannot succeed.
        telemetry.ALERTMANAGER_POSTS.labels("rejected").inc()
        telemetry.ALERTS_DROPPED.labels("rejected").inc(len(due))
        for key in due:
            del self._alerts[key]
        log.warning(
            "alertmanager %s rejected %d alerts with HTTP %s: %s; dropped them",
            self.url, len(due), response.status_code, response.text[:200],
        )

    def _dashboard_url(self, incident: Incident) -> str:
        query = {
            "var-service": incident.service,
            "var-incident_id": incident.incident_id,
            "from": int((incident.opened_at - 900) * 1000),
            "to": int((incident.resolved_at or incident.last_seen + 900) * 1000),
        }
        separator = "&" if "?" in self.dashboard_base_url else "?"
        return f"{self.dashboard_base_url}{separator}{urlencode(query)}"


def summary(event: AlertEvent) -> str:
    """One line a person can act on: tier, service, what is wrong and the lead finding."""
    incident, decision = event.incident, event.decision
    if event.kind == "resolved":
        minutes = (event.ts - incident.opened_at) / 60
        return (
            f"[resolved] {incident.service}: {decision.reason} is over "
            f"after {minutes:.0f} min (incident {incident.incident_id})"
        )

    lead = _lead_finding(event)
    detail = f"; {describe(lead)}" if lead else ""
    moved = ""
    if event.previous_tier not in (None, decision.tier):
        moved = f" (was {event.previous_tier})"
    return f"[{decision.tier}{moved}] {incident.service}: {decision.reason}{detail}"


def suspected_cause(incident: Incident) -> str:
    """Name the root cause and when it started, or say that none is known yet."""
    root = incident.root_cause
    if root is None:
        return "no infrastructure anomaly in this incident yet; only business KPIs moved"
    others = len([f for f in incident.findings if not f.is_kpi]) - 1
    also = f"; {others} more infrastructure series anomalous" if others > 0 else ""
    return f"{root.node}: {describe(root)} since {rfc3339(root.first_seen)}{also}"


def kpi_impact(incident: Incident) -> str:
    """List the KPI series moving now, with direction and size, or say there are none."""
    kpis = incident.kpi_impact
    if not kpis:
        return "no business KPI affected"
    return "; ".join(describe(finding) for finding in kpis)


def _lead_finding(event: AlertEvent) -> Finding | None:
    # On a page the hurt KPI leads; otherwise the suspected cause does.
    incident = event.incident
    if event.decision.tier == "page" and incident.kpi_impact:
        return max(incident.kpi_impact, key=lambda f: (abs(f.change), f.signal))
    if incident.root_cause is not None:
        return incident.root_cause
    return incident.active_findings[0] if incident.active_findings else None


def _check_timings(resend_interval: float, expiry_margin: float, max_alerts: int) -> None:
    if not 0 < resend_interval < expiry_margin:
        raise ConfigError(
            "alerts.notifier: resend_interval must be positive and shorter than "
            f"expiry_margin, found {resend_interval!r} and {expiry_margin!r}; otherwise "
            "Alertmanager resolves firing alerts between two sends"
        )
    if max_alerts < 1:
        raise ConfigError(
            f"alerts.notifier.max_alerts: expected at least 1, found {max_alerts!r}"
        )
