"""End to end: a starved Odoo worker pool, simulated, pages through the whole pipeline.

Samples go through the real stream (in-process and the Kafka-protocol broker), the
embedded ClickHouse engine, the detectors, incidents and tiers, and the page must reach
the page receiver of a real Alertmanager running the project's routing.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from estate.simulator import DEFAULT_EPOCH, Effect, Estate, Simulator
from pipeline.replay import ReplayChunk
from pipeline.storage import Storage
from tillwatch.config import AlertSettings, Settings, StorageSettings, StreamSettings
from tillwatch.offline import replay

HOUR = 3600.0
STARVED_FROM, STARVED_UNTIL = 11 * HOUR, 13 * HOUR  # Monday's lunch peak


def _starved_morning() -> list[ReplayChunk]:
    starved = Effect(
        target="driver.odoo_workers",
        op="multiply",
        value=0.25,
        start=DEFAULT_EPOCH + STARVED_FROM,
        end=DEFAULT_EPOCH + STARVED_UNTIL,
    )
    simulator = Simulator(Estate(), seed=5, effects=[starved])
    return [ReplayChunk(b) for b in simulator.run(duration=STARVED_UNTIL, chunk_steps=60)]


@pytest.fixture(params=["memory", "kafka"])
def stream_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    return request.getfixturevalue("kafka_broker").url


def test_starved_worker_pool_pages_in_a_real_alertmanager(
    tmp_path: Path, stream_url: str, clickhouse_url: str, alertmanager
):
    database = f"e2e_{uuid.uuid4().hex[:10]}"
    settings = Settings(
        data_dir=tmp_path / "data",
        stream=StreamSettings(url=stream_url),
        storage=StorageSettings(url=clickhouse_url, database=database, ttl_days=3650),
        alerts=AlertSettings(alertmanager_url=alertmanager.url),
    )

    run = replay(settings, _starved_morning(), tmp_path / "out")

    window = (DEFAULT_EPOCH + STARVED_FROM, DEFAULT_EPOCH + STARVED_UNTIL)
    pages = [
        e
        for e in run.alert_events
        if e.decision.tier == "page" and e.status == "firing" and window[0] <= e.ts < window[1]
    ]
    assert {e.incident.service for e in pages} & {"odoo", "traefik"}, "no page for the pool"
    paged = {e.incident.incident_id for e in pages}

    notification = alertmanager.inbox.wait_for(
        lambda n: (
            n.receiver == "page"
            and n.status == "firing"
            and any(a["labels"]["incident_id"] in paged for a in n.alerts)
        ),
        "the starved pool's page at the page receiver",
    )
    assert all(a["labels"]["tier"] == "page" for a in notification.alerts)

    with Storage.open(clickhouse_url, database=database, migrate=False) as storage:
        stored = storage.client.query(f"SELECT count() FROM {database}.samples").result_rows
        anomalies = storage.client.query(f"SELECT count() FROM {database}.anomalies")
    assert stored[0][0] == run.samples
    assert anomalies.result_rows[0][0] == len(run.anomalies)
