"""The detector stage: anomalies out of a sample batch, state kept across a restart."""

from __future__ import annotations

import numpy as np

from detectors.stage import DetectorStage
from tillwatch.sample import BatchBuilder


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
    assert {a.detector for a in anomalies} <= {"ensemble", "seasonal", "counts", "revenue"}
    assert all(a.explanation.startswith(a.detector + ":") for a in anomalies)
