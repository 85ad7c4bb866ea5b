"""Scoring detections against ground truth, on cases worked out by hand."""

from __future__ import annotations

import pytest

from estate.scoring import Detection, ExpectedIncident, format_score, score

LAG = ExpectedIncident("lag", 1000, 2000, "postgres", "page")
BACKUP = ExpectedIncident("backup", 5000, 9000, "pgbackrest", "ticket")
PROMO = ExpectedIncident("promo", 20000, 30000, "odoo", "info", also_services=("traefik",))
QUIET = ExpectedIncident("quiet", 40000, 50000, "odoo", "none")
STARVED = ExpectedIncident("starved", 60000, 61000, "odoo", "page", also_services=("traefik",))
EXPECTED = [LAG, BACKUP, PROMO, QUIET, STARVED]

# Worked by hand with the default 900 s grace:
#   LAG     <- 1300 ticket, 1600 page, 2800 page (inside grace): detected after 300 s, page
#   3000 postgres page: past LAG's end + grace -> false alarm; 4000 redis page -> false alarm
#   BACKUP  <- 5600 ticket: detected after 600 s, ticket as expected
#   PROMO   <- 25000 traefik page: detected after 5000 s, but paged -> over-paged
#   QUIET   <- 45000 odoo info: detected after 5000 s as info where none was expected
#   STARVED <- nothing: missed
# Pages 5, true 2 -> precision 40 %; paging incidents LAG and STARVED, LAG paged -> recall
# 50 %; median time to detect over LAG, BACKUP, PROMO (QUIET expects none) = 600 s.
DETECTIONS = [
    Detection(1600, "postgres", "page", ref="p1"),
    Detection(1300, "postgres", "ticket", ref="t1"),
    Detection(2800, "postgres", "page", ref="p2"),
    Detection(3000, "postgres", "page", ref="late"),
    Detection(4000, "redis", "page", ref="stray"),
    Detection(5600, "pgbackrest", "ticket", ref="t2"),
    Detection(25000, "traefik", "page", ref="promo"),
    Detection(45000, "odoo", "info", ref="i1"),
]


def _by_name(result, name):
    return next(v for v in result.incidents if v.incident.name == name)


def test_hand_worked_run():
    result = score(EXPECTED, DETECTIONS)

    lag = _by_name(result, "lag")
    assert (lag.detected, lag.time_to_detect, lag.tier_given, lag.tier_ok) == (
        True,
        300,
        "page",
        True,
    )
    assert [d.ref for d in lag.alerts] == ["t1", "p1", "p2"]
    backup = _by_name(result, "backup")
    assert (backup.time_to_detect, backup.tier_given, backup.tier_ok) == (600, "ticket", True)
    promo = _by_name(result, "promo")
    assert (promo.time_to_detect, promo.tier_given, promo.tier_ok) == (5000, "page", False)
    assert _by_name(result, "quiet").tier_given == "info"
    starved = _by_name(result, "starved")
    assert (starved.detected, starved.time_to_detect, starved.tier_given) == (
        False,
        None,
        "none",
    )

    assert result.true_pages == 2
    assert [d.ref for d in result.false_alarms] == ["late", "stray"]
    assert [d.ref for d in result.over_paged] == ["promo"]
    assert result.page_precision == pytest.approx(0.4)
    assert result.page_recall == pytest.approx(0.5)
    assert result.median_time_to_detect == 600
    assert [d.ref for d in result.unmatched] == ["late", "stray"]


def test_grace_decides_whether_a_late_page_still_counts():
    strict = score([LAG], [Detection(2800, "postgres", "page")], grace=0)
    lenient = score([LAG], [Detection(2800, "postgres", "page")], grace=900)

    assert (strict.true_pages, len(strict.false_alarms), strict.page_recall) == (0, 1, 0.0)
    assert (lenient.true_pages, len(lenient.false_alarms), lenient.page_recall) == (1, 0, 1.0)


def test_an_alert_for_another_service_does_not_detect_the_incident():
    result = score([LAG], [Detection(1500, "redis", "page")])

    assert not result.incidents[0].detected
    assert len(result.false_alarms) == 1 and result.page_precision == 0.0


def test_an_accepted_other_service_counts_for_the_root_cause():
    result = score([STARVED], [Detection(60120, "traefik", "page")])

    assert result.incidents[0].time_to_detect == 120
    assert (result.page_precision, result.page_recall) == (1.0, 1.0)


def test_an_alert_already_firing_when_the_incident_starts_detects_it_at_once():
    result = score([LAG], [Detection(700, "postgres", "ticket", end=1200)])

    assert result.incidents[0].time_to_detect == 0
    assert result.incidents[0].tier_given == "ticket"


def test_an_alert_that_resolved_before_the_incident_does_not_count():
    result = score([LAG], [Detection(300, "postgres", "page", end=900)])

    assert not result.incidents[0].detected
    assert len(result.false_alarms) == 1


def test_an_alert_overlapping_two_incidents_goes_to_the_one_started_last_before_it():
    first = ExpectedIncident("first", 1000, 2000, "odoo", "page")
    second = ExpectedIncident("second", 1500, 3000, "odoo", "page")

    result = score([second, first], [Detection(1700, "odoo", "page")])

    assert _by_name(result, "second").detected
    assert not _by_name(result, "first").detected
    assert result.page_recall == 0.5


def test_an_alert_firing_before_both_overlapping_incidents_goes_to_the_earliest():
    first = ExpectedIncident("first", 1000, 2000, "odoo", "page")
    second = ExpectedIncident("second", 1500, 3000, "odoo", "page")

    result = score([second, first], [Detection(900, "odoo", "page", end=1800)])

    assert _by_name(result, "first").detected
    assert not _by_name(result, "second").detected


def test_identical_alerts_are_each_counted():
    page = Detection(1500, "postgres", "page")

    result = score([LAG], [page, page])

    assert result.true_pages == 2 and result.page_precision == 1.0


def test_nothing_to_measure_gives_none_not_zero():
    result = score([BACKUP], [])

    assert (result.page_precision, result.page_recall, result.median_time_to_detect) == (
        None,
        None,
        None,
    )
    assert "page precision: -" in format_score(result)


def test_the_terminal_table_lists_each_incident_and_the_figures():
    text = format_score(score(EXPECTED, DETECTIONS))
    lines = text.splitlines()

    assert lines[0].split() == [
        "incident",
        "service",
        "expected",
        "given",
        "detected",
        "time",
        "to",
        "detect",
    ]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["lag", "postgres", "page", "page", "yes", "5m00s"]
    assert lines[4].split() == ["promo", "odoo", "info", "page", "!", "yes", "1h23m"]
    assert lines[6].split() == ["starved", "odoo", "page", "none", "!", "no", "-"]
    assert "pages: 2 true, 2 false alarms, 1 over-paged" in text
    assert "page precision: 40%   page recall: 50%   median time to detect: 10m00s" in text


def test_an_incident_pages_once_however_many_events_it_sends():
    # One incident re-sent at page tier three times, as the alerts journal records it,
    # and a second incident that pages once outside any expected window.
    events = [
        Detection(1200, "postgres", "page", ref="inc-a"),
        Detection(1500, "postgres", "page", ref="inc-a"),
        Detection(1900, "postgres", "page", ref="inc-a"),
        Detection(4000, "redis", "page", ref="inc-b"),
        Detection(4100, "redis", "page", ref="inc-b"),
    ]

    result = score([LAG], events)

    assert result.true_pages == 1
    assert [d.ts for d in result.false_alarms] == [4000]
    assert result.page_precision == pytest.approx(0.5)
    assert [d.ts for d in _by_name(result, "lag").alerts] == [1200, 1500, 1900]


def test_an_incident_escalated_to_page_counts_from_its_first_page():
    events = [
        Detection(1100, "postgres", "ticket", ref="inc-a"),
        Detection(1400, "postgres", "page", ref="inc-a"),
        Detection(1600, "postgres", "page", ref="inc-a"),
    ]

    result = score([LAG], events)

    assert (result.true_pages, result.page_precision, result.page_recall) == (1, 1.0, 1.0)
    assert _by_name(result, "lag").time_to_detect == 100


def test_pages_without_a_ref_count_one_each():
    events = [Detection(4000, "redis", "page"), Detection(4100, "redis", "page")]

    assert len(score([LAG], events).false_alarms) == 2


def test_an_alert_belongs_to_the_overlapping_incident_that_started_last_before_it():
    # A certificate counting down for days, and a starved pool that starts inside it;
    # both accept alerts that blame traefik.
    cert = ExpectedIncident("cert", 0, 100_000, "traefik", "ticket")
    pool = ExpectedIncident("pool", 60_000, 63_600, "odoo", "page", also_services=("traefik",))
    events = [
        Detection(500, "traefik", "ticket", ref="inc-cert"),
        Detection(60_060, "traefik", "page", ref="inc-pool"),
        Detection(59_000, "traefik", "info", end=61_000, ref="inc-early"),
    ]

    result = score([cert, pool], events)

    assert [d.ref for d in _by_name(result, "cert").alerts] == ["inc-cert", "inc-early"]
    assert [d.ref for d in _by_name(result, "pool").alerts] == ["inc-pool"]
    assert (result.true_pages, result.over_paged) == (1, ())


def test_a_thread_stays_with_the_incident_its_first_alert_matched():
    # The starved pool's incident still updates at page tier after its window: those
    # updates are its thread, not a page for the certificate counting down meanwhile.
    cert = ExpectedIncident("cert", 50000, 90000, "traefik", "ticket")
    detections = [
        Detection(50100, "traefik", "ticket", ref="countdown"),
        Detection(60100, "traefik", "page", ref="pool"),
        Detection(63000, "traefik", "page", ref="pool"),
        Detection(64000, "traefik", "page", ref="stray"),
    ]

    result = score([cert, STARVED], detections)

    assert _by_name(result, "cert").tier_given == "page"  # the stray page, unthreaded
    assert [d.ref for d in _by_name(result, "starved").alerts] == ["pool", "pool"]
    without_stray = score([cert, STARVED], detections[:3])
    assert _by_name(without_stray, "cert").tier_given == "ticket"
    assert without_stray.true_pages == 1 and not without_stray.over_paged
