"""Incidents: concurrent anomalies of one service and its dependencies, grouped.

The builder turns a stream of :class:`~tillwatch.anomaly.Anomaly` verdicts into
incidents. An anomaly joins an open incident when it arrives within ``window`` seconds
of that incident's latest anomaly and its node is related in the topology to a node
already in the incident; otherwise it opens a new one. An incident resolves once it has
seen no anomaly for ``quiet_period`` seconds. A finding (one anomalous series) stays
*active* while its latest anomaly is younger than ``window``, so an incident's impact
shrinks as KPIs recover even before it resolves.

Anomalies of a *state* detector (a rule: threshold, burn rate) report a condition that
holds, at its onset and then every two minutes for as long as it holds (well inside
``window``): a stale backup fires for a day. Such a
finding keeps its incident open and itself active, but it is fresh evidence only at its
onset. A new series joins an incident through a related finding with fresh evidence
within ``window``, or through a condition still holding that it depends on (errors
burning on Traefik's routes take the orders that fall behind them at any time): a
condition explains what it feeds, not what feeds it or what it protects. So a backup
failing since the night does not adopt the replica lag or the KPI noise of the
afternoon. A learning detector's event that goes on is treated the same way: the
detector stage reports it at onset and then sends reminders (``Anomaly.extra`` holds
:data:`~tillwatch.anomaly.REMINDER`), which hold the incident open but are not fresh.

Every new reading is reported as an ``updated`` event, even when the set of anomalous
series stays the same: a stock sync delay climbing past its budget changes the tier
without changing the series. The tier tracker (:mod:`alerts.tiers`) decides which of
these an operator needs to hear about.

Pure logic: no I/O and no clock. Time is the anomalies' own ``ts`` or the ``now`` passed
to :meth:`IncidentBuilder.advance`, so a replay gives the same incidents and ids.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

import xxhash

from alerts.topology import Topology
from tillwatch.anomaly import REMINDER, Anomaly, Direction
from tillwatch.errors import ConfigError

EventKind = Literal["opened", "updated", "resolved"]

# Detectors whose anomalies report a condition holding (a rule, reminding while it fires),
# not a fresh surprise each time; shell-style patterns on ``Anomaly.detector``.
STATE_DETECTORS: tuple[str, ...] = ("threshold", "burn_rate")


@dataclass(frozen=True, slots=True)
class Finding:
    """One anomalous series inside an incident, summarised over its anomalies.

    Attributes:
        series_id: the series' id.
        signal: the series' signal.
        labels: the series' labels.
        node: the topology node the series belongs to.
        first_seen: time of its first anomaly in this incident.
        last_seen: time of its latest anomaly.
        direction: direction of the latest anomaly.
        observed: latest observed value.
        expected: latest expected value.
        score: highest score seen.
        detector: detector of the latest anomaly.
        count: anomalies folded into this finding.
        active: whether its latest anomaly is within the grouping window of ``now``.
        fresh_seen: time of its latest fresh evidence: every anomaly of a learning
            detector, only the onset of a state detector's run (see ``STATE_DETECTORS``).
    """

    series_id: int
    signal: str
    labels: Mapping[str, str]
    node: str
    first_seen: float
    last_seen: float
    direction: Direction
    observed: float
    expected: float
    score: float
    detector: str
    count: int = 1
    active: bool = True
    fresh_seen: float = -math.inf

    @property
    def is_kpi(self) -> bool:
        """Whether the series is a business KPI."""
        return self.signal.startswith("kpi.")

    @property
    def change(self) -> float:
        """Relative deviation from the expected value: -0.6 means 60 % below it.

        When nothing was expected (0), the absolute deviation is returned instead.
        """
        if self.expected == 0:
            return self.observed
        return (self.observed - self.expected) / abs(self.expected)

    def folded(self, anomaly: Anomaly) -> Finding:
        """Return this finding with one more anomaly of its series folded in."""
        merged = dataclasses.replace(
            self,
            first_seen=min(self.first_seen, anomaly.ts),
            last_seen=max(self.last_seen, anomaly.ts),
            score=max(self.score, anomaly.score),
            count=self.count + 1,
        )
        if anomaly.ts < self.last_seen:
            # A late arrival widens the span but must not overwrite the newest reading.
            return merged
        return dataclasses.replace(
            merged,
            direction=anomaly.direction,
            observed=anomaly.observed,
            expected=anomaly.expected,
            detector=anomaly.detector,
        )


@dataclass(frozen=True, slots=True)
class Incident:
    """A snapshot of one incident.

    Attributes:
        incident_id: stable id, derived from the anomaly that opened it.
        opened_at: time of its first anomaly.
        last_seen: time of its latest anomaly.
        resolved_at: when it resolved, or None while open.
        service: the root cause's ``service`` label (the topology's name for its node
            when it has none); for a KPI-only incident, the service owning the KPI.
        root_cause: the likeliest infrastructure culprit, or None when only KPIs moved.
        findings: every series that went anomalous, in order of first appearance.
    """

    incident_id: str
    opened_at: float
    last_seen: float
    resolved_at: float | None
    service: str
    root_cause: Finding | None
    findings: tuple[Finding, ...]

    @property
    def active_findings(self) -> tuple[Finding, ...]:
        """Findings whose latest anomaly is recent."""
        return tuple(finding for finding in self.findings if finding.active)

    @property
    def kpi_impact(self) -> tuple[Finding, ...]:
        """Active KPI findings: the business impact right now."""
        return tuple(finding for finding in self.active_findings if finding.is_kpi)

    @property
    def signature(self) -> tuple[object, ...]:
        """What an operator sees change: which series are anomalous which way, and the
        root cause and service blamed; readings excluded."""
        active = tuple(sorted((f.series_id, f.direction) for f in self.active_findings))
        root = self.root_cause.series_id if self.root_cause else None
        return (active, root, self.service)

    def to_dict(self) -> dict[str, Any]:
        """Return the incident as JSON-ready data."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class IncidentEvent:
    """An incident opened, changed materially, or resolved at ``ts``."""

    kind: EventKind
    ts: float
    incident: Incident


@dataclass(slots=True)
class _OpenIncident:
    incident_id: str
    opened_at: float
    last_seen: float
    findings: dict[int, Finding] = field(default_factory=dict)
    signature: tuple[object, ...] = ()


class IncidentBuilder:
    """Groups anomalies into incidents and reports their lifecycle as events.

    Args:
        topology: the dependency map; the default estate when None.
        window: seconds within which anomalies count as concurrent, and for which a
            finding stays active after its latest anomaly.
        quiet_period: seconds without any anomaly after which an incident resolves.
        state_detectors: detector-name patterns whose anomalies report a condition
            holding rather than fresh evidence (:data:`STATE_DETECTORS`).

    Raises:
        ConfigError: when a duration is not positive.
    """

    def __init__(
        self,
        topology: Topology | None = None,
        *,
        window: float = 300.0,
        quiet_period: float = 600.0,
        state_detectors: Iterable[str] = STATE_DETECTORS,
    ) -> None:
        for name, seconds in (("window", window), ("quiet_period", quiet_period)):
            if not seconds > 0:
                raise ConfigError(
                    f"alerts.incidents.{name}: expected a positive number of seconds, "
                    f"found {seconds!r}"
                )
        self.topology = topology or Topology()
        self.window = window
        self.quiet_period = quiet_period
        self.state_detectors = tuple(state_detectors)
        self._open: dict[str, _OpenIncident] = {}

    def observe(self, anomaly: Anomaly) -> list[IncidentEvent]:
        """Fold one anomaly in; return the events it caused, oldest first.

        Args:
            anomaly: a detector verdict; its ``ts`` is taken as the current time.

        Returns:
            Resolutions of incidents gone quiet by ``anomaly.ts``, then the opening or
            update of the incident the anomaly joined: an update whenever the anomaly is
            its series' newest reading or changes the incident's signature, so nothing
            for a late arrival that changes neither.
        """
        events = self.advance(anomaly.ts)
        node = self.topology.node_of(anomaly.signal, anomaly.labels)
        incident = self._match(anomaly.series_id, node, anomaly.ts)

        if incident is None:
            incident = self._start(anomaly)
            kind: EventKind = "opened"
        else:
            kind = "updated"

        previous = incident.signature
        newest = self._fold(incident, anomaly, node)
        snapshot = self._snapshot(incident, anomaly.ts)
        incident.signature = snapshot.signature
        if kind == "opened" or newest or incident.signature != previous:
            events.append(IncidentEvent(kind, anomaly.ts, snapshot))
        return events

    def observe_all(self, anomalies: Iterable[Anomaly]) -> list[IncidentEvent]:
        """Fold many anomalies in time order; return all their events."""
        events: list[IncidentEvent] = []
        for anomaly in sorted(anomalies, key=lambda a: (a.ts, a.series_id)):
            events.extend(self.observe(anomaly))
        return events

    def advance(self, now: float) -> list[IncidentEvent]:
        """Move time to ``now``: resolve quiet incidents, report findings that went stale.

        Args:
            now: the current time, seconds since the epoch.

        Returns:
            ``resolved`` events, and ``updated`` events for incidents whose active
            findings changed, ordered by incident opening.
        """
        events: list[IncidentEvent] = []
        for incident in sorted(self._open.values(), key=lambda i: (i.opened_at, i.incident_id)):
            if now - incident.last_seen >= self.quiet_period:
                del self._open[incident.incident_id]
                snapshot = self._snapshot(incident, now, resolved_at=now)
                events.append(IncidentEvent("resolved", now, snapshot))
                continue

            snapshot = self._snapshot(incident, now)
            signature = snapshot.signature
            if signature != incident.signature:
                incident.signature = signature
                events.append(IncidentEvent("updated", now, snapshot))
        return events

    def open_incidents(self, now: float) -> list[Incident]:
        """Return snapshots of every open incident as of ``now``."""
        ordered = sorted(self._open.values(), key=lambda i: (i.opened_at, i.incident_id))
        return [self._snapshot(incident, now) for incident in ordered]

    def _match(self, series_id: int, node: str, ts: float) -> _OpenIncident | None:
        # A series stays in the incident it joined, so concurrent incidents never swap
        # anomalies; a new one joins the related incident with the strongest fresh
        # evidence for its node (a replica 100 times behind over a queue twice its usual
        # depth), the oldest on a tie.
        oldest_first = sorted(self._open.values(), key=lambda i: (i.opened_at, i.incident_id))
        live = [incident for incident in oldest_first if ts - incident.last_seen <= self.window]
        owner = next((i for i in live if series_id in i.findings), None)
        if owner is not None:
            return owner

        strength = {id(i): self._evidence(i, node, ts) for i in live}
        related = [i for i in live if strength[id(i)] is not None]
        return max(related, key=lambda i: strength[id(i)] or 0.0, default=None)

    def _evidence(self, incident: _OpenIncident, node: str, ts: float) -> float | None:
        """The largest deviation among the incident's findings that recruit a new series
        of ``node`` at ``ts`` (:meth:`_recruits`), or None when none does."""
        findings = incident.findings.values()
        related = [finding for finding in findings if self._recruits(finding, node, ts)]
        return max((abs(finding.change) for finding in related), default=None)

    def _recruits(self, finding: Finding, node: str, ts: float) -> bool:
        """Whether a finding draws a new series of ``node`` into its incident at ``ts``.

        Fresh evidence within the window does, through any topology relation. A condition
        still holding (its latest anomaly within the window, its onset older) does only
        for nodes that depend on it: it may cause what it feeds now, but what happens
        to its dependencies or to what it protects hours after its onset is not evidence
        of one cause.
        """
        if ts - finding.fresh_seen <= self.window:
            return self.topology.related(node, finding.node)
        holding = ts - finding.last_seen <= self.window
        return holding and finding.node in self.topology.upstream(node)

    def _start(self, anomaly: Anomaly) -> _OpenIncident:
        digest = xxhash.xxh64_hexdigest(f"{anomaly.series_id}:{anomaly.ts!r}".encode())
        incident = _OpenIncident(f"inc-{digest}", anomaly.ts, anomaly.ts)
        self._open[incident.incident_id] = incident
        return incident

    def _fold(self, incident: _OpenIncident, anomaly: Anomaly, node: str) -> bool:
        """Fold the anomaly into its finding; return whether it is the newest reading."""
        known = incident.findings.get(anomaly.series_id)
        finding = known.folded(anomaly) if known else _first_finding(anomaly, node)
        if self._fresh(anomaly, known):
            finding = dataclasses.replace(
                finding, fresh_seen=max(finding.fresh_seen, anomaly.ts)
            )
        incident.findings[anomaly.series_id] = finding
        incident.last_seen = max(incident.last_seen, anomaly.ts)
        return known is None or anomaly.ts >= known.last_seen

    def _fresh(self, anomaly: Anomaly, known: Finding | None) -> bool:
        """Whether an anomaly is fresh evidence: any of a learning detector but its
        reminders; of a state detector, the onset of a run (its series' first, or the
        first after a gap longer than the window, when the rule cleared and fired again)."""
        if anomaly.extra.get(REMINDER):
            return known is None  # a reminder whose onset this builder never saw
        if not any(fnmatchcase(anomaly.detector, p) for p in self.state_detectors):
            return True
        return known is None or anomaly.ts - known.last_seen > self.window

    def _snapshot(
        self, incident: _OpenIncident, now: float, resolved_at: float | None = None
    ) -> Incident:
        findings = tuple(
            dataclasses.replace(
                finding, active=resolved_at is None and now - finding.last_seen <= self.window
            )
            for finding in sorted(incident.findings.values(), key=_appearance)
        )
        # An incident outlives its first findings: once a cause has gone quiet, what is
        # anomalous now is the better suspect (a morning's demand rise on Redis does not
        # explain the starved workers of lunchtime that kept its incident open).
        active = [finding for finding in findings if finding.active]
        root = root_cause(active, self.topology) or root_cause(findings, self.topology)
        return Incident(
            incident_id=incident.incident_id,
            opened_at=incident.opened_at,
            last_seen=incident.last_seen,
            resolved_at=resolved_at,
            service=self._service(root, findings[0]),
            root_cause=root,
            findings=findings,
        )

    def _service(self, root: Finding | None, first: Finding) -> str:
        # The collectors' own service label names the culprit the way operators know it.
        if root is not None:
            return self.topology.service_label_of(root.node, root.labels)
        return self.topology.service_of(first.node)


def root_cause(findings: Iterable[Finding], topology: Topology) -> Finding | None:
    """Return the likeliest culprit among infrastructure findings.

    The most upstream nodes are those no other anomalous node is a dependency of; among
    their findings the earliest wins (ties broken by signal, for determinism).

    Args:
        findings: the findings of one incident.
        topology: the dependency map.

    Returns:
        The root-cause finding, or None when no infrastructure series is anomalous.
    """
    infra = [finding for finding in findings if not finding.is_kpi]
    nodes = {finding.node for finding in infra}
    upstream_most = [
        finding for finding in infra if not (topology.upstream(finding.node) & nodes)
    ]
    return min(upstream_most, key=_appearance, default=None)


def _appearance(finding: Finding) -> tuple[float, str, int]:
    return (finding.first_seen, finding.signal, finding.series_id)


def _first_finding(anomaly: Anomaly, node: str) -> Finding:
    return Finding(
        series_id=anomaly.series_id,
        signal=anomaly.signal,
        labels=dict(anomaly.labels),
        node=node,
        first_seen=anomaly.ts,
        last_seen=anomaly.ts,
        direction=anomaly.direction,
        observed=anomaly.observed,
        expected=anomaly.expected,
        score=anomaly.score,
        detector=anomaly.detector,
    )


def describe(finding: Finding) -> str:
    """One phrase for a person: ``kpi.orders_per_minute down 62% (15 vs 40 expected)``."""
    labels = _label_text(finding.labels)
    if finding.expected == 0:
        change = f"{finding.direction} by {finding.observed:.3g}"
    else:
        change = f"{finding.direction} {abs(finding.change):.0%}"
    return (
        f"{finding.signal}{labels} {change} "
        f"({finding.observed:.3g} vs {finding.expected:.3g} expected)"
    )


def _label_text(labels: Mapping[str, str]) -> str:
    shown = {key: value for key, value in labels.items() if key != "service"}
    if not shown:
        return ""
    return "{" + ",".join(f"{key}={shown[key]}" for key in sorted(shown)) + "}"
