"""tillwatch run with the example configuration, pointed at locally started services."""

from __future__ import annotations

import uuid
from pathlib import Path

from prometheus_client import REGISTRY

from pipeline.storage import Storage
from tests.services._support import wait_until
from tillwatch import config
from tillwatch.config import CollectorSettings, Settings
from tillwatch.runner import Runner

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "tillwatch.example.toml"


def _local_targets(example: Settings, redis_server, pg_cluster, traefik, odoo_db):
    """The example's collectors, re-aimed at this test's services and scraped each second."""
    local = {
        "redis": {"host": redis_server.host, "port": redis_server.port},
        "traefik": {"metrics_url": traefik.metrics_url},
        "odoo": {"dsn": odoo_db.ro_dsn},
        "queue": {"odoo_dsn": odoo_db.ro_dsn},
    }
    nodes = iter([pg_cluster.primary, pg_cluster.replica])
    targets = []
    for target in example.collectors:
        if target.source == "backup":
            continue  # needs a pgBackRest repository: covered by test_backup_collector
        options = dict(target.options)
        if target.source == "postgres":
            node = next(nodes)
            options = {
                "dsn": node.dsn(),
                "expected_replicas": options.get("expected_replicas", []),
            }
        else:
            options = {
                **{k: v for k, v in options.items() if not k.startswith("redis")},
                **local[target.source],
            }
        targets.append(
            CollectorSettings(
                source=target.source,
                interval_seconds=1.0,
                labels=target.labels,
                options=options,
            )
        )
    return targets


def test_example_config_runs_and_stores_every_collectors_samples(
    tmp_path, clickhouse_url, redis_server, pg_cluster, traefik, odoo_db
):
    example = config.load(EXAMPLE)
    database = f"example_{uuid.uuid4().hex[:8]}"
    settings = example.model_copy(
        update={
            "data_dir": tmp_path / "data",
            "storage": example.storage.model_copy(
                update={"url": clickhouse_url, "database": database}
            ),
            "telemetry": example.telemetry.model_copy(update={"metrics_address": None}),
            "collectors": _local_targets(example, redis_server, pg_cluster, traefik, odoo_db),
        }
    )

    runner = Runner(settings, role="all")
    runner.start()
    try:
        with Storage.open(clickhouse_url, database=database, migrate=False) as storage:
            wait_until(
                lambda: len(_up_signals(storage, database)) == 5,
                "a stored up signal from each of the five collectors",
                timeout=60,
            )
    finally:
        assert runner.drain() == 0

    with Storage.open(clickhouse_url, database=database, migrate=False) as storage:
        up = _up_signals(storage, database)
    assert up == {
        f"{source}.up": 1.0 for source in ("postgres", "redis", "traefik", "odoo", "queue")
    }
    # The same scrapes are served on /metrics under redis_exporter's names.
    redis_labels = {"service": "redis", "instance": "cache-1:6379"}
    assert REGISTRY.get_sample_value("redis_up", redis_labels) == 1.0


def _up_signals(storage: Storage, database: str) -> dict[str, float]:
    rows = storage.client.query(
        f"SELECT signal, max(value) FROM {database}.samples"
        " WHERE signal LIKE '%.up' GROUP BY signal"
    ).result_rows
    return dict(rows)
