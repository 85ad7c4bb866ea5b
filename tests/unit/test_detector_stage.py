"""The detector stage: anomalies out of a sample batch, state kept across a restart."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from detectors.ensemble import VIEW, VIEWS
from detectors.stage import DetectorStage
from tillwatch.anomaly import REMINDER, Anomaly
from tillwatch.sample import BatchBuilder, SampleBatch


def batch_of(values: np.ndarray, start: int = 0):
    builder = BatchBuilder()
    for step, value in enumerate(values.tolist()):
        ts = 1.7e9 + 60.0 * (start + step)
        builder.add(ts, "kpi.orders_per_minute", {"service": "shop"}, value)
        builder.add(ts, "redis.hit_ratio", {"service": "redis"}, 0.9)
    return builder.build()


def test_a_spike_after_warm_up_becomes_an_upward_anomaly():
    rng = np.random.default_rng(1)
    # A long calm history: new extremes of plain noise become rare.
    values = 50 + rng.normal(0, 1, 2000)
    values[1900:1910] = 500
    anomalies = DetectorStage().process(batch_of(values))

    spike = [a for a in anomalies if a.ts == 1.7e9 + 60.0 * 1900]
    assert spike and spike[0].signal == "kpi.orders_per_minute"
    assert spike[0].direction == "up" and 0.5 <= spike[0].score <= 1.0
    assert spike[0].observed > spike[0].upper


def test_an_ensemble_anomaly_names_the_view_that_decided_it():
    rng = np.random.default_rng(4)
    builder = BatchBuilder()
    latency = 0.02 + rng.normal(0, 0.001, 2000)
    latency[1900] = 0.5  # far beyond any latency the instance has shown
    for step, value in enumerate(latency.tolist()):
        builder.add(1.7e9 + 60.0 * step, "redis.latency_seconds", {"service": "redis"}, value)

    anomalies = DetectorStage().process(builder.build())

    spike = [a for a in anomalies if a.ts == 1.7e9 + 60.0 * 1900]
    assert spike and spike[0].detector == "ensemble"
    assert spike[0].explanation.startswith(
        "ensemble (novelty: beyond the range the series has shown): redis.latency_seconds up")


def test_a_restored_stage_raises_no_warm_up_alarm(tmp_path):
    rng = np.random.default_rng(2)
    values = 50 + rng.normal(0, 1, 600)
    stage = DetectorStage()
    stage.process(batch_of(values[:400]))
    stage.snapshot(tmp_path / "stage.npz")

    restored = DetectorStage()
    restored.restore(tmp_path / "stage.npz")
    after = batch_of(values[400:], start=400)

    # Same verdicts as the worker that never stopped: no warm-up alarms.
    assert restored.process(after) == stage.process(after)
    np.testing.assert_array_equal(restored.ensemble.state, stage.ensemble.state)


def test_a_normal_simulated_estate_raises_few_kpi_anomalies_and_names_the_detector():
    from detectors.calendar import Calendar, TradingHours
    from estate.simulator import DAY, Simulator

    simulator = Simulator(seed=3)
    hours = [TradingHours({"store": s.name}, s.hours) for s in simulator.estate.stores]
    stage = DetectorStage(calendar=Calendar(hours=hours))
    anomalies = []
    for batch in simulator.run(duration=2 * DAY):
        anomalies += stage.process(batch)

    orders = [a for a in anomalies if a.signal.startswith(("kpi.orders", "kpi.revenue"))]
    # Two days of 5 stores' orders and revenue at one-minute steps: 28,800 samples.
    assert len(orders) <= 10
    assert {a.detector for a in anomalies} <= {"ensemble", "seasonal", "counts", "revenue",
                                                "threshold", "burn_rate"}
    # A normal estate breaks no limit: every backup, replica and certificate is in order.
    assert not [a for a in anomalies if a.detector in ("threshold", "burn_rate")]
    assert all(a.explanation.startswith(a.detector) for a in anomalies)
    ensemble = [a.explanation for a in anomalies if a.detector == "ensemble"]
    assert ensemble and all(e.startswith("ensemble (") for e in ensemble)


def rule_batch(signal: str, labels: dict, values, start: int = 0, every: float = 60.0):
    builder = BatchBuilder()
    for step, value in enumerate(values):
        builder.add(1.7e9 + every * (start + step), signal, labels, float(value))
    return builder.build()


BACKUP = {"service": "backup", "stanza": "main"}


def test_a_stale_backup_fires_the_built_in_rule_after_ten_minutes_naming_the_limit():
    ages = 86_000 + 60.0 * np.arange(30)  # passes 86,400 s at the seventh sample
    stage = DetectorStage()
    anomalies = stage.process(rule_batch("backup.last_success_age_seconds",
                                         {**BACKUP, "backup_type": "diff"}, ages))
    full = stage.process(rule_batch("backup.last_success_age_seconds",
                                    {**BACKUP, "backup_type": "full"}, ages + 86_400))

    first_beyond = int(np.argmax(ages > 86_400))
    assert [a.ts for a in anomalies][0] == 1.7e9 + 60.0 * (first_beyond + 10)
    assert {a.detector for a in anomalies} == {"threshold"}
    assert "above 86400 s for 600 s" in anomalies[0].explanation
    assert anomalies[0].direction == "up" and anomalies[0].expected == 86_400
    # A weekly full backup two days old is on schedule.
    assert full == []


def test_a_rule_that_keeps_firing_reports_its_onset_then_reminds():
    lag = "postgres.replication_lag_seconds"
    labels = {"service": "postgres", "replica": "replica-1"}
    # Past the 300 s limit for 30 minutes, back under it for 10, then past it again.
    lags = [600.0] * 30 + [10.0] * 10 + [600.0] * 15
    anomalies = DetectorStage().process(rule_batch(lag, labels, lags))

    minutes = [round((a.ts - 1.7e9) / 60.0) for a in anomalies]
    # The limit needs 5 minutes (at 0..5); reminders every 2 minutes while it holds; the
    # second run fires as an onset of its own 5 minutes after it starts (at 40..45).
    assert minutes == [5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 45, 47, 49, 51, 53]
    assert [m for m, a in zip(minutes, anomalies, strict=True) if not a.extra] == [5, 45]


def test_a_late_sample_neither_ends_a_firing_rule_nor_reminds_of_it():
    lag, labels = "postgres.replication_lag_seconds", {"service": "postgres"}
    stage = DetectorStage()
    stage.process(rule_batch(lag, labels, [600.0] * 10))  # reported at 5, 7 and 9

    late = stage.process(rule_batch(lag, labels, [600.0], start=3))
    going_on = stage.process(rule_batch(lag, labels, [600.0] * 2, start=10))

    assert late == []
    assert [(round((a.ts - 1.7e9) / 60), a.extra) for a in going_on] == [(11, {REMINDER: 1.0})]


def test_a_burning_error_ratio_fires_the_burn_rate_rule_with_its_windows():
    ratios = [0.0] * 60 + [0.05] * 30
    labels = {"service": "odoo", "router": "webshop"}
    anomalies = DetectorStage().process(rule_batch("traefik.server_error_ratio", labels,
                                                   ratios))

    assert anomalies and {a.detector for a in anomalies} == {"burn_rate"}
    assert anomalies[0].explanation.startswith("burn_rate: traefik.server_error_ratio")
    assert "99.9% objective" in anomalies[0].explanation
    # Two clean hours of history: the slow alert (6x over 6 h and 30 min) goes first,
    # after 9 bad minutes (9 * 5 % / 69 min = 6.5x); the fast one joins at 18.
    assert anomalies[0].ts == 1.7e9 + 60.0 * (60 + 8)
    assert "6.5x over 360 min" in anomalies[0].explanation
    assert "over 60 min" in anomalies[-1].explanation


def test_without_rules_a_limited_signal_goes_to_the_ensemble():
    stage = DetectorStage(rules=())
    ages = 86_000 + 60.0 * np.arange(30)
    stage.process(rule_batch("backup.last_success_age_seconds", BACKUP, ages))

    assert stage.family_of(next(iter(rule_batch("backup.last_success_age_seconds",
                                                BACKUP, [1.0]).series))) == "ensemble"
    assert len(stage._slots["ensemble"]) == 1


def test_a_firing_rule_keeps_firing_across_a_restart_but_not_across_a_new_rule(tmp_path):
    lags = [600.0] * 10
    labels = {"service": "postgres"}
    stage = DetectorStage()
    stage.process(rule_batch("postgres.replication_lag_seconds", labels, lags))
    stage.snapshot(tmp_path / "stage.npz")
    later = rule_batch("postgres.replication_lag_seconds", labels, lags[:2], start=10)

    restored = DetectorStage()
    restored.restore(tmp_path / "stage.npz")
    from detectors.rules import ThresholdRule
    changed = DetectorStage(rules=(ThresholdRule("postgres.*_lag_seconds", 300.0,
                                                 min_duration=300.0),))
    changed.restore(tmp_path / "stage.npz")

    # Reported at 5, 7 and 9 before the restart: the next reminder is due at 11.
    [reminder] = restored.process(later)
    assert (reminder.detector, reminder.ts, reminder.extra) == (
        "threshold", 1.7e9 + 60.0 * 11, {REMINDER: 1.0})
    # Another rule table: its rules start afresh and wait their minimum duration.
    assert changed.process(later) == []


def test_the_multivariate_view_flags_a_joint_anomaly_of_a_service():
    rng = np.random.default_rng(4)
    n = 1800  # the forest scores once fitted on a day (1,440 rows)
    load = rng.uniform(0, 1, n)
    rate, latency = 100 + 50 * load, 0.2 + 0.1 * load + rng.normal(0, 0.002, n)
    odd = n - 30
    rate[odd], latency[odd] = 148.0, 0.202  # busy, yet as fast as when idle
    stage = DetectorStage(multivariate=True)
    anomalies = []
    for first in range(0, n, 60):
        builder = BatchBuilder()
        for step in range(first, first + 60):
            ts = 1.7e9 + 60.0 * step
            builder.add(ts, "traefik.requests_per_second", {"service": "odoo"}, rate[step])
            builder.add(ts, "traefik.latency_p95_seconds", {"service": "odoo"},
                        latency[step])
        anomalies += stage.process(builder.build())
        stage.settle()  # refits land at batch boundaries: the run repeats

    joint = [a for a in anomalies if a.detector == "forest"]
    assert 1.7e9 + 60.0 * odd in [a.ts for a in joint]
    assert joint[0].signal == "service.joint" and joint[0].labels == {"service": "odoo"}
    # Scored rows: the last 360 or so; "beyond every training row" is rare for the rest.
    assert len(joint) <= 5


def test_a_surplus_window_reports_up_even_on_a_minute_without_a_sale():
    rng = np.random.default_rng(5)
    values = rng.poisson(10, 3 * 1440).astype(float)
    burst = 2 * 1440 + 600
    values[burst:burst + 30] = rng.poisson(30, 30)
    values[burst + 20] = 0.0  # one empty minute inside the rush
    builder = BatchBuilder()
    for step, value in enumerate(values.tolist()):
        builder.add(1.7e9 + 60.0 * step, "kpi.orders_per_minute", {"service": "odoo"}, value)

    anomalies = DetectorStage().process(builder.build())

    rush = [a for a in anomalies if burst <= (a.ts - 1.7e9) / 60 < burst + 30]
    empty = [a for a in rush if a.observed == 0.0]
    assert len(rush) >= 25 and empty
    # The window scored a surplus: one minute's count below the expected rate is no drop.
    assert {a.direction for a in rush} == {"up"}


def test_a_snapshot_of_another_layout_starts_that_family_afresh(tmp_path):
    stage = DetectorStage()
    stage.process(batch_of(np.full(30, 10.0)))
    stage.snapshot(tmp_path / "stage.npz")
    with np.load(tmp_path / "stage.npz") as saved:
        arrays = dict(saved)
    # A snapshot from before column names were saved, its table one column short.
    arrays["counts_state"] = arrays["counts_state"][:, :-1]
    del arrays["counts_columns"]
    np.savez(tmp_path / "old.npz", **arrays)

    restored = DetectorStage()
    restored.restore(tmp_path / "old.npz")

    assert restored._slots["counts"] == {}
    assert len(restored._slots["ensemble"]) == 1


def test_a_late_sample_beside_an_anomaly_after_an_upgrade_that_dropped_a_view(tmp_path):
    rng = np.random.default_rng(5)
    builder = BatchBuilder()
    for step in range(300):
        ts = 1.7e9 + 60.0 * step
        builder.add(ts, "redis.latency_seconds", {"service": "redis"},
                    0.02 + rng.normal(0, 1e-3))
        builder.add(ts, "traefik.latency_p95_seconds", {"service": "odoo"},
                    0.2 + rng.normal(0, 1e-2))
    stage = DetectorStage()
    stage.process(builder.build())
    stage.snapshot(tmp_path / "stage.npz")
    restored = DetectorStage()
    restored.restore(tmp_path / "stage.npz")
    # Written when the ensemble had one view more: the last one's index is now past the end.
    restored.ensemble.state[:, VIEW] = len(VIEWS)

    builder = BatchBuilder()
    builder.add(1.7e9 + 60.0 * 300, "redis.latency_seconds", {"service": "redis"}, 0.5)
    builder.add(1.7e9, "traefik.latency_p95_seconds", {"service": "odoo"}, 0.2)  # late
    anomalies = restored.process(builder.build())

    assert [a.signal for a in anomalies] == ["redis.latency_seconds"]
    assert anomalies[0].explanation.startswith("ensemble (novelty: ")


MINUTE_1000 = 1.7e9 + 60.0 * 1_000


def latency_batch(latency: np.ndarray, start: int = 0) -> SampleBatch:
    """One-minute samples of one Redis instance's latency (an ensemble series); NaN marks
    a missed scrape."""
    builder = BatchBuilder()
    for step, value in enumerate(latency.tolist()):
        if np.isnan(value):
            continue
        builder.add(1.7e9 + 60.0 * (start + step), "redis.latency_seconds",
                    {"service": "redis"}, value)
    return builder.build()


def test_a_score_below_the_threshold_holds_back_no_later_anomaly():
    rng = np.random.default_rng(21)
    latency = 0.02 + rng.normal(0, 0.001, 400)
    high, span = latency[:300].max(), np.ptp(latency[:300])
    latency[300] = high + 0.018 * span  # a little above anything seen: scores about 0.7
    latency[330] = high + 0.12 * span  # well above it, inside a hold the first would start
    late = 1.7e9 + 60.0 * 250  # after the holds of the new extremes of a young series

    demanding = DetectorStage(threshold=0.9).process(latency_batch(latency))
    default = DetectorStage(threshold=0.5).process(latency_batch(latency))

    assert [a.ts for a in demanding if a.ts >= late] == [1.7e9 + 60.0 * 330]
    assert [a.ts for a in default if a.ts >= late] == [1.7e9 + 60.0 * 300]  # one event


def test_an_ensemble_event_that_goes_on_is_reported_once_then_reminded_of():
    rng = np.random.default_rng(5)
    latency = 0.02 + rng.normal(0, 0.001, 1_500)
    latency[1_000:] += 0.006  # six deviations up, for good: the new normal in the end
    latency[1_011] = np.nan  # a missed scrape does not end the event
    stage = DetectorStage(threshold=0.5)

    anomalies = [a for a in stage.process(latency_batch(latency)) if a.ts >= MINUTE_1000]

    onset, *reminders = anomalies
    assert onset.ts == MINUTE_1000 and REMINDER not in onset.extra
    assert reminders and all(a.extra == {REMINDER: 1.0} for a in reminders)
    assert all("still going on" in a.explanation and a.score >= 0.5 for a in reminders)
    paces = np.diff([a.ts for a in anomalies])
    assert paces.min() == stage.reminder and paces.max() <= 2 * stage.reminder
    assert MINUTE_1000 + 60.0 * 30 < reminders[-1].ts < MINUTE_1000 + 60.0 * 200


def test_an_ensemble_event_that_dips_below_the_threshold_for_a_minute_goes_on():
    rng = np.random.default_rng(0)
    latency = 0.02 + rng.normal(0, 0.001, 1_200)
    latency[1_000:] += 0.004  # four deviations: a new maximum first, the level view later
    stage = DetectorStage(threshold=0.5)
    before = stage.process(latency_batch(latency[:1_001]))
    held = []
    after = []
    for minute in range(1_001, 1_200):
        after += stage.process(latency_batch(latency[minute:minute + 1], start=minute))
        held.append(float(stage.ensemble.held_score(np.array([0]))[0]))

    # The event's hold lasts 100 minutes; what comes after is another event.
    event = [a for a in before + after if MINUTE_1000 <= a.ts < MINUTE_1000 + 6_000]
    assert 0 < held[0] < 0.5 and held[2] >= 0.5  # the dip: held, but below the threshold
    assert event[0].ts == MINUTE_1000 and REMINDER not in event[0].extra
    assert event[-1].ts > MINUTE_1000 + 60.0 * 90  # reminded of to its end, not only onset
    assert all(a.extra == {REMINDER: 1.0} for a in event[1:])
    assert np.diff([a.ts for a in event]).max() <= 2 * stage.reminder


def test_a_snapshot_taken_in_a_dip_keeps_when_the_dip_began(tmp_path):
    rng = np.random.default_rng(0)
    latency = 0.02 + rng.normal(0, 0.001, 1_002)
    latency[1_000:] += 0.004  # the event of the test above, saved in its dip at 1,001
    stage = DetectorStage(threshold=0.5)
    stage.process(latency_batch(latency))
    stage.snapshot(tmp_path / "first.npz")
    restored = DetectorStage(threshold=0.5)
    restored.restore(tmp_path / "first.npz")
    restored.snapshot(tmp_path / "second.npz")

    with np.load(tmp_path / "first.npz") as first, np.load(tmp_path / "second.npz") as second:
        assert first["reported_dipped"].tolist() == [MINUTE_1000 + 60.0]
        assert second["reported_ts"].tolist() == [MINUTE_1000]
        assert second["reported_dipped"].tolist() == [MINUTE_1000 + 60.0]


def test_a_restarted_stage_goes_on_reminding_of_an_ensemble_event(tmp_path):
    rng = np.random.default_rng(5)
    latency = 0.02 + rng.normal(0, 0.001, 1_060)
    latency[1_000:] += 0.006  # the event of the test above, cut by a restart at 1,030
    stage = DetectorStage(threshold=0.5)
    before = stage.process(latency_batch(latency[:1_030]))
    stage.snapshot(tmp_path / "stage.npz")

    restored = DetectorStage(threshold=0.5)
    restored.restore(tmp_path / "stage.npz")
    after = restored.process(latency_batch(latency[1_030:], start=1_030))

    stamps = [a.ts for a in before + after if a.ts >= MINUTE_1000]
    assert after and all(a.extra == {REMINDER: 1.0} for a in after)
    assert np.diff(stamps).max() == restored.reminder  # the pace goes on through it


def test_an_upgrade_that_adds_columns_keeps_what_each_series_learned(tmp_path, caplog):
    rng = np.random.default_rng(8)
    latency = 0.02 + rng.normal(0, 0.001, 600)
    latency[410] = 0.5  # ten samples after the restart: inside a second warm-up, if any
    stage = DetectorStage()
    stage.process(latency_batch(latency[:400]))
    stage.snapshot(tmp_path / "stage.npz")
    with np.load(tmp_path / "stage.npz") as saved:
        arrays = dict(saved)
    # The snapshot an older version wrote: the ensemble had no drift view then.
    names = arrays["ensemble_columns"].tolist()
    kept = [i for i, name in enumerate(names) if not name.startswith("drift_")]
    arrays["ensemble_state"] = arrays["ensemble_state"][:, kept]
    arrays["ensemble_columns"] = arrays["ensemble_columns"][kept]
    np.savez(tmp_path / "old.npz", **arrays)

    restored = DetectorStage()
    with caplog.at_level("INFO", logger="detectors.stage"):
        restored.restore(tmp_path / "old.npz")

    columns = restored.ensemble.columns
    shared = [columns.index(names[i]) for i in kept]
    np.testing.assert_array_equal(restored.ensemble.state[:, shared],
                                  stage.ensemble.state[:, shared])
    assert restored.ensemble.state[0, columns.index("seen")] == 400  # no second warm-up
    assert np.isnan(restored.ensemble.state[0, columns.index("drift_level")])
    assert "drift_level, drift_mean, drift_var" in caplog.text
    after = latency_batch(latency[400:], start=400)
    found = restored.process(after)
    assert found == stage.process(after)
    assert [a.ts for a in found] == [1.7e9 + 60.0 * 410]  # a fresh start would be neutral


def odoo_batches(rate: np.ndarray, latency: np.ndarray, start: int = 0
                 ) -> Iterator[SampleBatch]:
    """One-minute rows of a service's request rate and latency, an hour per batch."""
    for first in range(0, len(rate), 60):
        builder = BatchBuilder()
        for step in range(first, min(first + 60, len(rate))):
            ts = 1.7e9 + 60.0 * (start + step)
            builder.add(ts, "traefik.requests_per_second", {"service": "odoo"}, rate[step])
            builder.add(ts, "traefik.latency_p95_seconds", {"service": "odoo"},
                        latency[step])
        yield builder.build()


def run(stage: DetectorStage, batches: Iterable[SampleBatch]) -> list[Anomaly]:
    anomalies = []
    for batch in batches:
        anomalies += stage.process(batch)
        stage.settle()  # refits land at batch boundaries: runs repeat
    return anomalies


def test_a_restored_stage_keeps_its_service_forests_scoring(tmp_path, caplog):
    rng = np.random.default_rng(6)
    days, n = 2 * 1440, 2 * 1440 + 240
    load = rng.uniform(0, 1, n)
    rate, latency = 100 + 50 * load, 0.2 + 0.1 * load + rng.normal(0, 0.002, n)
    odd = days + 5  # right after the restart
    rate[odd], latency[odd] = 148.0, 0.202  # busy, yet as fast as when idle
    stage = DetectorStage(multivariate=True)
    run(stage, odoo_batches(rate[:days], latency[:days]))
    stage.snapshot(tmp_path / "stage.npz")
    with np.load(tmp_path / "stage.npz", allow_pickle=False) as saved:
        np.savez(tmp_path / "old.npz", **{k: v for k, v in saved.items()
                                          if not k.startswith("forest")})

    restored, old = DetectorStage(multivariate=True), DetectorStage(multivariate=True)
    restored.restore(tmp_path / "stage.npz")
    with caplog.at_level("INFO", logger="detectors.stage"):
        old.restore(tmp_path / "old.npz")
    after = list(odoo_batches(rate[days:], latency[days:], start=days))
    verdicts = run(restored, after)
    joint = [a for a in verdicts if a.detector == "forest"]

    assert 1.7e9 + 60.0 * odd in [a.ts for a in joint] and len(joint) <= 3
    # The same verdicts as the worker that never stopped: no warm-up, no alarm of its own.
    assert verdicts == run(stage, after)
    # A snapshot from before forests were saved: the forest starts afresh, blind for a day.
    assert not [a for a in run(old, after) if a.detector == "forest"]
    assert "no service forests" in caplog.text
