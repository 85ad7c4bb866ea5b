"""The tier policy: which incidents page a person, which open a ticket, which only inform.

The policy is a table, :data:`RULES`, read top to bottom; the first rule whose
condition holds on the incident's *active* findings decides:

==========  =====================  ==================================================
tier        alertname              when
==========  =====================  ==================================================
page        BusinessKpiHurt        a KPI moves in its harmful direction (orders down,
                                   stock sync delayed) past its budget, or checkout
                                   path latency is past the customers' budget
page        DataAtRisk             replication is broken and no fresh backup exists
info        DemandPeak             KPIs rose the welcome way (orders up) and only load
                                   signals (request rate, worker saturation) rose too
ticket      ControlFailing         a control fails: backup stale, certificate expiring
ticket      InfrastructureAnomaly  an infrastructure anomaly with no business impact yet
info        TrendNotice            only trends and capacity notices, rising load
                                   (request rates) included
info        KpiShift               a KPI moved and nothing says which way hurts it
==========  =====================  ==================================================

Which way hurts each KPI, the budgets past which a move hurts, how many anomalies a KPI
needs before it pages, and which signals make up each condition are tables too
(:data:`HARMFUL_DIRECTIONS`, :data:`KPI_BUDGETS`, :data:`CUSTOMER_BUDGETS`,
:data:`MIN_KPI_ANOMALIES`, :data:`CONDITIONS`), matched with shell-style patterns.
:class:`TierTracker` follows each incident and emits an alert event whenever its tier
or its impact changes, so an incident can climb from ticket to page and back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal

from alerts.incidents import EventKind, Finding, Incident, IncidentEvent
from tillwatch.anomaly import Direction
from tillwatch.errors import ConfigError

Tier = Literal["page", "ticket", "info"]

# Alertmanager severity for each tier, for receivers that key on severity.
SEVERITY: Mapping[Tier, str] = {"page": "critical", "ticket": "warning", "info": "info"}

# Which way a KPI hurts the business; exact signals first (the names collectors/odoo.py
# declares), then the first matching pattern, for KPIs added later.
HARMFUL_DIRECTIONS: tuple[tuple[str, Direction], ...] = (
    ("kpi.orders_per_minute", "down"),
    ("kpi.revenue_per_minute", "down"),
    ("kpi.stock_sync_delay_seconds", "up"),
    ("kpi.stock_sync_delay_max_seconds", "up"),
    ("kpi.pickings_overdue", "up"),
    ("kpi.pickings_overdue_oldest_age_seconds", "up"),
    ("kpi.*orders*", "down"),
    ("kpi.*revenue*", "down"),
    ("kpi.*conversion*", "down"),
    ("kpi.*latency*", "up"),
    ("kpi.*error*", "up"),
    ("kpi.*delay*", "up"),
    ("kpi.*backlog*", "up"),
    ("kpi.*overdue*", "up"),
)

# Named conditions: (signal pattern, direction) pairs any one of which makes it true.
# Signal names are those the collectors in collectors/ declare.
CONDITIONS: Mapping[str, tuple[tuple[str, Direction], ...]] = {
    # A replica gone, or behind past the lag limit (the lag-seconds signals are judged by
    # the threshold rules of detectors/rules.py). Byte lag has no limit: an anomaly in it
    # is a replica falling behind for a while, not replication lost, so it is left out.
    "replication_broken": (
        ("postgres.replica_connected", "down"),
        ("postgres.replicas_connected", "down"),
        ("postgres.wal_receiver_streaming", "down"),
        ("postgres.replica_lag_seconds", "up"),
        ("postgres.replication_lag_seconds", "up"),
    ),
    "backup_stale": (
        ("backup.last_success_age_seconds", "up"),
        ("backup.stale", "up"),
        ("backup.stanza_status", "up"),
        ("backup.error", "up"),
        ("backup.wal_archive_stalled_seconds", "up"),
    ),
    "certificate_expiring": (
        ("traefik.tls_cert_expiry_days", "down"),
        ("*cert*expir*", "down"),
    ),
    # Signals that rise with demand: a peak of shoppers, not a fault.
    "load": (
        ("traefik.requests_per_second", "up"),
        ("traefik.service_requests_per_second", "up"),
        ("traefik.path_requests_per_second", "up"),
        ("traefik.entrypoint_open_connections", "up"),
        ("redis.commands_per_second", "up"),
        ("postgres.commits_per_second", "up"),
        ("postgres.connections", "up"),
    ),
    "capacity": (
        ("postgres.database_size_bytes", "up"),
        ("backup.database_size_bytes", "up"),
        ("backup.repository_size_bytes", "up"),
        ("*disk_free*", "down"),
        ("*disk_used*", "up"),
    ),
}

# Where the business has a budget for a KPI, a move the harmful way hurts only past it:
# stock that reaches the stores within two minutes is on time, whatever was expected.
# (KPI pattern, level); first match wins; a KPI with no budget hurts at any level.
KPI_BUDGETS: tuple[tuple[str, float], ...] = (
    ("kpi.stock_sync_delay*", 120.0),
)

# Signals that time what customers feel though no KPI carries them, with the level past
# which they feel it: Traefik's access-log quantiles of the checkout paths (2.5 s is the
# shops' checkout budget; the webshop's is looser). (pattern, harmful direction, level).
CUSTOMER_BUDGETS: tuple[tuple[str, Direction, float], ...] = (
    ("traefik.path_latency_*", "up", 2.5),
)

# Anomalies a KPI finding without a budget needs before it pages. 1 pages on the first
# anomalous sample: today's detectors flag a shift once at its onset, so a higher floor
# would only delay true pages; raise it for detectors that flag every noisy minute.
MIN_KPI_ANOMALIES = 1

# Detectors whose verdicts are slow trends, not sudden breakage.
TREND_DETECTORS: tuple[str, ...] = ("*trend*", "*forecast*", "*capacity*")


@dataclass(frozen=True, slots=True)
class TierDecision:
    """The tier an incident deserves now, with the rule that decided it.

    Attributes:
        tier: ``page``, ``ticket`` or ``info``.
        alertname: the rule's alert name, an Alertmanager label.
        reason: why, in one sentence a person can read.
    """

    tier: Tier
    alertname: str
    reason: str

    @property
    def severity(self) -> str:
        """The Alertmanager ``severity`` label of the tier."""
        return SEVERITY[self.tier]


Condition = Callable[["TierPolicy", tuple[Finding, ...]], bool]


@dataclass(frozen=True, slots=True)
class TierRule:
    """One row of the policy table."""

    tier: Tier
    alertname: str
    when: Condition
    reason: str


class TierPolicy:
    """Maps an incident to a tier with :data:`RULES`.

    Args:
        rules: the ordered rule table; the first rule that holds decides.
        harmful_directions: (KPI pattern, harmful direction) pairs, first match wins.
        conditions: named (signal pattern, direction) sets used by the rules.
        trend_detectors: detector-name patterns whose verdicts count as trends.
        kpi_budgets: (KPI pattern, level) pairs: the KPI hurts only past its level.
        customer_budgets: (signal pattern, direction, level) of infrastructure signals
            that hurt customers once past their level (checkout path latency).
        min_kpi_anomalies: anomalies a KPI finding needs before it hurts, unless it is
            past a budget; 1 pages on the first anomalous sample.

    Raises:
        ConfigError: when ``min_kpi_anomalies`` is below 1.
    """

    def __init__(
        self,
        *,
        rules: Iterable[TierRule] | None = None,
        harmful_directions: Iterable[tuple[str, Direction]] = HARMFUL_DIRECTIONS,
        conditions: Mapping[str, tuple[tuple[str, Direction], ...]] = CONDITIONS,
        trend_detectors: Iterable[str] = TREND_DETECTORS,
        kpi_budgets: Iterable[tuple[str, float]] = KPI_BUDGETS,
        customer_budgets: Iterable[tuple[str, Direction, float]] = CUSTOMER_BUDGETS,
        min_kpi_anomalies: int = MIN_KPI_ANOMALIES,
    ) -> None:
        if min_kpi_anomalies < 1:
            raise ConfigError(
                f"alerts.tiers.min_kpi_anomalies: expected 1 or more, found "
                f"{min_kpi_anomalies!r}; 1 pages on the first anomalous sample"
            )
        self.rules = tuple(RULES if rules is None else rules)
        self.harmful_directions = tuple(harmful_directions)
        self.conditions = dict(conditions)
        self.trend_detectors = tuple(trend_detectors)
        self.kpi_budgets = tuple(kpi_budgets)
        self.customer_budgets = tuple(customer_budgets)
        self.min_kpi_anomalies = min_kpi_anomalies

    def decide(self, incident: Incident) -> TierDecision:
        """Return the tier the incident's active findings call for.

        Args:
            incident: an incident snapshot.

        Returns:
            The first matching rule's decision; an ``info`` notice when none matches.
        """
        findings = incident.active_findings
        for rule in self.rules:
            if rule.when(self, findings):
                return TierDecision(rule.tier, rule.alertname, rule.reason)
        return TierDecision("info", "IncidentNotice", "anomalies with no known impact")

    def harmful_direction(self, signal: str) -> Direction | None:
        """Return the direction in which a KPI hurts, or None when it is not known."""
        for pattern, direction in self.harmful_directions:
            if fnmatchcase(signal, pattern):
                return direction
        return None

    def hurts(self, finding: Finding) -> bool:
        """Whether a finding costs the business now: a KPI moving its harmful way, past its
        budget if it has one and on enough anomalies if it has none, or a customer-facing
        signal past its budget."""
        if not finding.is_kpi:
            return self.customer_hurt(finding)
        if finding.direction != self.harmful_direction(finding.signal):
            return False

        budget = _first_match(finding.signal, self.kpi_budgets)
        if budget is not None:
            return _past(finding.observed, finding.direction, budget)
        return finding.count >= self.min_kpi_anomalies

    def customer_hurt(self, finding: Finding) -> bool:
        """Whether an infrastructure finding is past the level at which customers feel it."""
        return any(
            finding.direction == direction
            and fnmatchcase(finding.signal, pattern)
            and _past(finding.observed, direction, level)
            for pattern, direction, level in self.customer_budgets
        )

    def welcome(self, finding: Finding) -> bool:
        """Whether a KPI finding moves opposite to its harmful direction (orders up)."""
        harmful = self.harmful_direction(finding.signal)
        return finding.is_kpi and harmful is not None and finding.direction not in (
            harmful, "none"
        )

    def meets(self, condition: str, finding: Finding) -> bool:
        """Whether a finding satisfies one of the named condition's (pattern, direction)."""
        return any(
            finding.direction == direction and fnmatchcase(finding.signal, pattern)
            for pattern, direction in self.conditions.get(condition, ())
        )

    def is_trend(self, finding: Finding) -> bool:
        """Whether a finding is a slow trend or a capacity notice rather than breakage."""
        by_detector = any(fnmatchcase(finding.detector, p) for p in self.trend_detectors)
        return by_detector or self.meets("capacity", finding)


def _first_match(signal: str, table: Iterable[tuple[str, float]]) -> float | None:
    return next((level for pattern, level in table if fnmatchcase(signal, pattern)), None)


def _past(observed: float, direction: Direction, level: float) -> bool:
    return observed > level if direction == "up" else observed < level


def _kpi_hurt(policy: TierPolicy, findings: tuple[Finding, ...]) -> bool:
    return any(policy.hurts(finding) for finding in findings)


def _data_at_risk(policy: TierPolicy, findings: tuple[Finding, ...]) -> bool:
    broken = any(policy.meets("replication_broken", finding) for finding in findings)
    stale = any(policy.meets("backup_stale", finding) for finding in findings)
    return broken and stale


def _control_failing(policy: TierPolicy, findings: tuple[Finding, ...]) -> bool:
    controls = ("backup_stale", "certificate_expiring")
    return any(policy.meets(name, finding) for name in controls for finding in findings)


def _notice(policy: TierPolicy, finding: Finding) -> bool:
    # More shoppers raise request rates before any KPI moves: a capacity notice, no fault.
    return policy.is_trend(finding) or policy.meets("load", finding)


def _infrastructure_anomaly(policy: TierPolicy, findings: tuple[Finding, ...]) -> bool:
    return any(not f.is_kpi and not _notice(policy, f) for f in findings)


def _trend_only(policy: TierPolicy, findings: tuple[Finding, ...]) -> bool:
    infra = [finding for finding in findings if not finding.is_kpi]
    return bool(infra) and all(_notice(policy, finding) for finding in infra)


def _demand_peak(policy: TierPolicy, findings: tuple[Finding, ...]) -> bool:
    welcome = any(policy.welcome(finding) for finding in findings)
    infra = [finding for finding in findings if not finding.is_kpi]
    explained = all(policy.meets("load", f) or policy.is_trend(f) for f in infra)
    return welcome and explained


def _kpi_moved(policy: TierPolicy, findings: tuple[Finding, ...]) -> bool:
    return any(finding.is_kpi for finding in findings)


RULES: tuple[TierRule, ...] = (
    TierRule("page", "BusinessKpiHurt", _kpi_hurt, "a business KPI is hurt now"),
    TierRule(
        "page", "DataAtRisk", _data_at_risk, "replication is broken and no fresh backup exists"
    ),
    TierRule(
        "info",
        "DemandPeak",
        _demand_peak,
        "demand is up: KPIs rose and only load signals rose with them (a capacity notice)",
    ),
    TierRule(
        "ticket",
        "ControlFailing",
        _control_failing,
        "a control is failing (backup stale or certificate near expiry)",
    ),
    TierRule(
        "ticket",
        "InfrastructureAnomaly",
        _infrastructure_anomaly,
        "an infrastructure anomaly with no business impact yet",
    ),
    TierRule(
        "info", "TrendNotice", _trend_only, "a trend or capacity notice (load rising included)"
    ),
    TierRule("info", "KpiShift", _kpi_moved, "a KPI moved; no rule says that direction hurts"),
)


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A tiered alert event, published on ``tillwatch.alerts`` keyed by incident id.

    Attributes:
        kind: ``opened``, ``updated`` (tier or impact changed) or ``resolved``.
        ts: when it happened, seconds since the epoch.
        incident: the incident snapshot.
        decision: the tier decision; for ``resolved``, the last one it fired with.
        previous_tier: the tier before an ``updated`` event, else None.
    """

    kind: EventKind
    ts: float
    incident: Incident
    decision: TierDecision
    previous_tier: Tier | None = None

    @property
    def status(self) -> Literal["firing", "resolved"]:
        """Alertmanager's view: ``resolved`` once the incident is, else ``firing``."""
        return "resolved" if self.kind == "resolved" else "firing"

    def to_dict(self) -> dict[str, Any]:
        """Return the event as JSON-ready data."""
        data = dataclasses.asdict(self)
        data["status"] = self.status
        return data


class TierTracker:
    """Follows incidents through their lifecycle and turns them into alert events.

    The incident builder reports every new reading; the tracker re-decides the tier on
    each and tells only what an operator would see change: the tier or rule, or the
    incident's signature (which series are anomalous which way, the root cause).

    Args:
        policy: the tier policy; the default table when None.
    """

    def __init__(self, policy: TierPolicy | None = None) -> None:
        self.policy = policy or TierPolicy()
        self._last: dict[str, tuple[TierDecision, tuple[object, ...]]] = {}

    def apply(self, event: IncidentEvent) -> AlertEvent | None:
        """Return the alert event an incident event calls for, if any.

        Args:
            event: an incident opened, updated or resolved.

        Returns:
            The alert event; None for an update that changes neither the decision nor
            the incident's signature, for an update of an incident with nothing active
            left (it keeps its tier until it resolves), or a resolution never alerted on.
        """
        incident = event.incident
        previous = self._last.get(incident.incident_id)
        if event.kind == "resolved":
            self._last.pop(incident.incident_id, None)
            if previous is None:
                return None
            return AlertEvent("resolved", event.ts, incident, previous[0])
        if previous is not None and not incident.active_findings:
            return None

        decision = self.policy.decide(incident)
        told = (decision, incident.signature)
        if previous == told:
            return None
        self._last[incident.incident_id] = told
        if previous is None:
            return AlertEvent("opened", event.ts, incident, decision)
        return AlertEvent("updated", event.ts, incident, decision, previous[0].tier)

    def apply_all(self, events: Iterable[IncidentEvent]) -> list[AlertEvent]:
        """Apply many incident events in order; return the alert events they caused."""
        alerts = (self.apply(event) for event in events)
        return [alert for alert in alerts if alert is not None]
