"""How well detections matched the incidents a run injected: a pure function and its table.

Matching rules, in the order they apply:

1. Each expected incident owns the window ``[start, end + grace]``. An alert belongs to it
   when its service is one the incident accepts and its active span ``[ts, end or ts]``
   overlaps that window. An alert belongs to at most one incident: of those it overlaps,
   the one that started last before the alert fired (a page at Friday noon belongs to
   the worker pool starved at noon, not to the certificate counting down since
   Thursday), else the earliest. Alerts of one alerting incident (detections with the
   same non-empty ``ref``) stay with the incident its first matched alert belongs to:
   they are one thread in Alertmanager (grouped by ``incident_id``), so a worker pool's
   incident still updating after its window is not evidence for a certificate counting
   down on the same service meanwhile.
2. The incident is *detected* when an alert belongs to it; the time to detect is the
   first such alert's ``ts`` minus the incident's start (0 when it was already firing).
   The tier given is the highest tier among its alerts: an incident may be raised as a
   ticket and escalated to a page.
3. Pages are counted as a pager sees them: once per alerting incident (detections with
   the same non-empty ``ref``), at the first detection that paged. Alertmanager groups a
   tillwatch incident's alerts by ``incident_id``, so its later ``updated`` events at page
   tier arrive in the same notification thread, not as new pages. Detections without a
   ``ref`` count one page each.
4. A page that belongs to an incident expecting a page is a true page; every other page
   is a false page: ``false_alarms`` when it belongs to no incident, ``over_paged`` when
   its incident expected less (a promotion peak, a stale backup).
5. Page precision is true pages over all pages; page recall is the incidents expecting a
   page that received one, over all incidents expecting a page.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Tier = Literal["page", "ticket", "info", "none"]
TIER_RANK = {"none": 0, "info": 1, "ticket": 2, "page": 3}
DEFAULT_GRACE_SECONDS = 900.0


@dataclass(frozen=True, slots=True)
class ExpectedIncident:
    """One injected incident and what a good pipeline should make of it.

    Attributes:
        name: the scenario's name.
        start: when the incident begins, seconds since the epoch.
        end: when its cause stops.
        service: the root-cause service, as in the ``service`` label.
        expected_tier: the tier a good pipeline gives it; ``none`` means it must stay quiet.
        also_services: other services an alert may name and still count, e.g. Traefik for
            a starved Odoo worker pool.
        affected_kpis: the KPI signals the incident is expected to hurt.
    """

    name: str
    start: float
    end: float
    service: str
    expected_tier: Tier
    also_services: tuple[str, ...] = ()
    affected_kpis: tuple[str, ...] = ()

    @property
    def services(self) -> tuple[str, ...]:
        """Every service an alert may name to count for this incident."""
        return (self.service, *self.also_services)


@dataclass(frozen=True, slots=True)
class Detection:
    """One alert or incident the pipeline raised.

    Attributes:
        ts: when it started firing, seconds since the epoch.
        service: the service it blames.
        tier: ``page``, ``ticket`` or ``info``.
        end: when it resolved; None while still firing or for a point-in-time alert.
        ref: the caller's id for it (incident id, alert fingerprint).
    """

    ts: float
    service: str
    tier: Tier
    end: float | None = None
    ref: str = ""


@dataclass(frozen=True, slots=True)
class IncidentScore:
    """The verdict on one expected incident."""

    incident: ExpectedIncident
    detected: bool
    time_to_detect: float | None
    tier_given: Tier
    alerts: tuple[Detection, ...] = ()

    @property
    def tier_ok(self) -> bool:
        """Whether the tier given is the tier expected."""
        return self.tier_given == self.incident.expected_tier


@dataclass(frozen=True, slots=True)
class Score:
    """The verdict on a whole run."""

    incidents: tuple[IncidentScore, ...]
    true_pages: int
    false_alarms: tuple[Detection, ...]
    over_paged: tuple[Detection, ...]
    page_precision: float | None
    page_recall: float | None
    median_time_to_detect: float | None
    unmatched: tuple[Detection, ...] = ()


def score(
    expected: Sequence[ExpectedIncident],
    detections: Sequence[Detection],
    grace: float = DEFAULT_GRACE_SECONDS,
) -> Score:
    """Match detections to expected incidents and measure precision, recall and delay.

    Args:
        expected: the injected incidents with their ground truth.
        detections: what the pipeline raised, in any order.
        grace: seconds after an incident's end during which an alert still counts for it.

    Returns:
        The per-incident verdicts and the run's figures; a ratio with nothing to divide
        by is None.
    """
    owner = _assign(expected, detections, grace)
    verdicts = tuple(
        _verdict(incident, [detections[d] for d, ix in owner.items() if ix == n])
        for n, incident in enumerate(expected)
    )

    pages = _pages(detections)
    true_pages = [d for d in pages if d in owner and expected[owner[d]].expected_tier == "page"]
    wanted = [v for v in verdicts if v.incident.expected_tier == "page"]
    delays = [
        v.time_to_detect
        for v in verdicts
        if v.time_to_detect is not None and v.incident.expected_tier != "none"
    ]
    return Score(
        incidents=verdicts,
        true_pages=len(true_pages),
        false_alarms=tuple(detections[d] for d in pages if d not in owner),
        over_paged=tuple(detections[d] for d in pages if d in owner and d not in true_pages),
        page_precision=_ratio(len(true_pages), len(pages)),
        page_recall=_ratio(sum(v.tier_given == "page" for v in wanted), len(wanted)),
        median_time_to_detect=statistics.median(delays) if delays else None,
        unmatched=tuple(d for n, d in enumerate(detections) if n not in owner),
    )


def _assign(
    expected: Sequence[ExpectedIncident], detections: Sequence[Detection], grace: float
) -> dict[int, int]:
    """Map each detection's position to the incident it belongs to: its thread's (same
    ``ref``) once an earlier detection of the thread was matched; else, of those it
    overlaps, the latest to start at or before it fired, else the earliest."""
    owner: dict[int, int] = {}
    thread: dict[str, int] = {}
    order = sorted(range(len(expected)), key=lambda n: expected[n].start)
    for d in sorted(range(len(detections)), key=lambda d: detections[d].ts):
        detection = detections[d]
        if detection.ref in thread:
            owner[d] = thread[detection.ref]
            continue
        overlapped = [n for n in order if _belongs(detection, expected[n], grace)]
        started = [n for n in overlapped if expected[n].start <= detection.ts]
        if started or overlapped:
            owner[d] = (started or overlapped)[-1 if started else 0]
            if detection.ref:
                thread[detection.ref] = owner[d]
    return owner


def _belongs(detection: Detection, incident: ExpectedIncident, grace: float) -> bool:
    if detection.service not in incident.services:
        return False
    last = detection.ts if detection.end is None else max(detection.end, detection.ts)
    return detection.ts <= incident.end + grace and last >= incident.start


def _verdict(incident: ExpectedIncident, alerts: list[Detection]) -> IncidentScore:
    if not alerts:
        return IncidentScore(incident, detected=False, time_to_detect=None, tier_given="none")

    alerts.sort(key=lambda d: d.ts)
    tier = max((d.tier for d in alerts), key=TIER_RANK.__getitem__)
    delay = max(0.0, alerts[0].ts - incident.start)
    return IncidentScore(incident, True, delay, tier, tuple(alerts))


def _pages(detections: Sequence[Detection]) -> list[int]:
    """Positions of the detections that ring the pager: the first page of each ``ref``."""
    paged: set[str] = set()
    pages = []
    for d in sorted(range(len(detections)), key=lambda d: detections[d].ts):
        detection = detections[d]
        if detection.tier != "page" or (detection.ref and detection.ref in paged):
            continue
        paged.add(detection.ref)
        pages.append(d)
    return sorted(pages)


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def format_score(result: Score) -> str:
    """Render a score as a plain-text table for a terminal."""
    header = ("incident", "service", "expected", "given", "detected", "time to detect")
    rows = [header] + [
        (
            v.incident.name,
            v.incident.service,
            v.incident.expected_tier,
            v.tier_given + ("" if v.tier_ok else " !"),
            "yes" if v.detected else "no",
            _duration(v.time_to_detect),
        )
        for v in result.incidents
    ]
    widths = [max(len(row[col]) for row in rows) for col in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [
        "",
        f"pages: {result.true_pages} true, {len(result.false_alarms)} false alarms, "
        f"{len(result.over_paged)} over-paged",
        f"page precision: {_percent(result.page_precision)}   "
        f"page recall: {_percent(result.page_recall)}   "
        f"median time to detect: {_duration(result.median_time_to_detect)}",
    ]
    return "\n".join(lines)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.0%}"
