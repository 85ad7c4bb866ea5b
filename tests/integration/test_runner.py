"""The runner: stages wired by the stream, and a drain on stop that loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from prometheus_client import REGISTRY

from pipeline.storage import Storage
from pipeline.stream import TOPIC_SAMPLES, open_stream
from tests.services._support import free_port, wait_until
from tillwatch.config import Settings, StorageSettings, StreamSettings, TelemetrySettings
from tillwatch.runner import Runner
from tillwatch.sample import SampleBatch, Series
from tillwatch.stages import publish_batch

ROOT = Path(__file__).resolve().parents[2]


def _batches(count: int, per_batch: int, seed: int = 3) -> list[SampleBatch]:
    rng = np.random.default_rng(seed)
    series = [
        Series.of("redis.hit_ratio", {"instance": f"cache-{i}"}) for i in range(per_batch)
    ]
    ix = np.arange(per_batch, dtype=np.uint32)
    return [
        SampleBatch(series, ix, np.full(per_batch, 1.9e9 + 15 * n), rng.random(per_batch))
        for n in range(count)
    ]


def _settings(
    tmp_path: Path, stream_url: str, storage_url: str, **telemetry: object
) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        stream=StreamSettings(url=stream_url),
        storage=StorageSettings(url=storage_url, database=f"run_{uuid.uuid4().hex[:10]}"),
        telemetry=TelemetrySettings(metrics_address=None, **telemetry),
    )


def _stored(runner_settings: Settings) -> int:
    # Storage is read in a child process: this process may hold the session's engine.
    code = (
        "import sys; from pipeline.storage import Storage;"
        "s = Storage.open(sys.argv[1], database=sys.argv[2], migrate=False);"
        "print(s.client.query(f'SELECT count() FROM {sys.argv[2]}.samples').result_rows[0][0])"
    )
    config = runner_settings.storage
    out = subprocess.run(
        [sys.executable, "-c", code, config.url, config.database],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=120,
    )
    return int(out.stdout.strip().splitlines()[-1])


def test_memory_pipeline_stores_everything_and_archives_dead_letters(tmp_path, clickhouse_url):
    settings = _settings(tmp_path, "memory://", clickhouse_url)
    stored_before = _metric("tillwatch_samples_stored_total")
    dead_before = _metric("tillwatch_deadlettered_total", stage="sink", reason="bad_magic")
    runner = Runner(settings, role="sink")
    runner.start()

    for batch in _batches(count=30, per_batch=500):
        publish_batch(runner.resources.stream, batch)
    runner.resources.stream.publish(TOPIC_SAMPLES, b"not a sample batch, not at all")
    assert runner.drain() == 0

    config = settings.storage
    with Storage.open(clickhouse_url, database=config.database, migrate=False) as storage:
        count = storage.client.query(f"SELECT count() FROM {config.database}.samples")
        assert count.result_rows[0][0] == 15_000
    archived = (settings.data_dir / "deadletter.jsonl").read_text().splitlines()
    assert len(archived) == 1 and '"bad_magic"' in archived[0]
    assert _metric("tillwatch_samples_stored_total") - stored_before == 15_000
    assert _metric("tillwatch_deadlettered_total", stage="sink", reason="bad_magic") == (
        dead_before + 1
    )


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_sigterm_drains_in_flight_batches_over_kafka(tmp_path, kafka_broker):
    storage_url = f"chdb://{tmp_path / 'engine'}"
    metrics_port = free_port()
    settings = _settings(tmp_path, kafka_broker.url, storage_url)
    config = tmp_path / "tillwatch.toml"
    config.write_text(
        f'data_dir = "{settings.data_dir}"\n'
        f'[stream]\nurl = "{kafka_broker.url}"\n'
        f'[storage]\nurl = "{storage_url}"\ndatabase = "{settings.storage.database}"\n'
        f'[telemetry]\nmetrics_address = "127.0.0.1:{metrics_port}"\n'
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tillwatch.cli",
            "run",
            "--role",
            "sink",
            "--config",
            str(config),
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_until(lambda: _metrics(metrics_port) is not None, "tillwatch /metrics", timeout=60)
        stream = open_stream(kafka_broker.url)
        for batch in _batches(count=40, per_batch=1_000):
            publish_batch(stream, batch)
        stream.flush(timeout=30)
        stream.close()

        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()

    assert process.returncode == 0, stderr
    assert "drained" in stderr
    assert _stored(settings) == 40_000


def _metrics(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
            return response.read().decode()
    except OSError:
        return None


def test_run_on_embedded_defaults_starts_and_stops_cleanly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tillwatch.cli", "run", "--duration", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )

    assert result.returncode == 0, result.stderr
    assert "tillwatch running: role=all, 4 stage(s)" in result.stderr
    assert "tillwatch stopped: role=all, drained" in result.stderr
    assert (tmp_path / "tillwatch-data" / "clickhouse").is_dir()
