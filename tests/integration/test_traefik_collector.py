"""The traefik collector against the real Traefik binary and a backend the test drives.

Each test takes its own pair of scrapes around the traffic it sends, so the module can
share one Traefik: only increases between the two scrapes count. Scrape times are
passed explicitly, so rates are exact.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from collectors.base import TargetState, scrape
from collectors.traefik import AccessLogTail, TraefikCollector, histogram_quantile
from tests.services._support import require_binary, wait_until
from tests.services.traefik import Traefik
from tillwatch.sample import SampleBatch

DATA = Path(__file__).parents[1] / "data" / "traefik"
SHOP = {"router": "shop@file", "service": "backend@file"}
CHECKOUT = {"router": "checkout@file", "service": "backend@file"}
SERVICE = {"service": "backend@file"}

# Every signal these tests assert a value of; the contract suite checks the declared set.
CHECKED_SIGNALS = {
    "traefik.up",
    "traefik.scrape_duration_seconds",
    "traefik.requests_per_second",
    "traefik.server_error_ratio",
    "traefik.latency_p50_seconds",
    "traefik.latency_p95_seconds",
    "traefik.latency_p99_seconds",
    "traefik.service_requests_per_second",
    "traefik.service_server_error_ratio",
    "traefik.service_latency_p50_seconds",
    "traefik.service_latency_p95_seconds",
    "traefik.service_latency_p99_seconds",
    "traefik.entrypoint_open_connections",
    "traefik.tls_cert_expiry_days",
    "traefik.path_requests_per_second",
    "traefik.path_latency_p50_seconds",
    "traefik.path_latency_p95_seconds",
    "traefik.path_latency_p99_seconds",
}


def value(batch: SampleBatch, signal: str, **labels: str) -> float | None:
    """The value of ``signal`` whose labels include ``labels``, or None when absent."""
    found = [
        s.value for s in batch.samples()
        if s.signal == signal and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) <= 1, (signal, labels, found)
    return found[0] if found else None


def send(traefik: Traefik, path: str, count: int) -> list[int]:
    """Send ``count`` GETs, ten at a time, and return their status codes."""
    with ThreadPoolExecutor(max_workers=10) as pool:
        return list(pool.map(lambda _: traefik.get(path), range(count)))


def collector_for(traefik: Traefik, **options: object) -> TraefikCollector:
    labels = {"service": "traefik", "instance": "edge-1"}
    return TraefikCollector(labels=labels, metrics_url=traefik.metrics_url, **options)


@pytest.mark.integration
def test_latency_quantiles_fall_in_the_bucket_of_the_set_latency(traefik, backend):
    collector, state, t0 = collector_for(traefik), TargetState(), time.time()
    first = scrape(collector, state, now=t0)
    assert value(first, "traefik.up") == 1.0
    assert value(first, "traefik.latency_p95_seconds", **SHOP) is None

    backend.set(delay=0.2)
    assert send(traefik, "/shop/cart", 100) == [200] * 100
    batch = scrape(collector, state, now=t0 + 10)

    assert value(batch, "traefik.requests_per_second", **SHOP) == 10.0
    assert value(batch, "traefik.service_requests_per_second", **SERVICE) == 10.0
    # Every request took 0.2 s plus proxying: (0.2, 0.25], or the next bucket on a busy
    # machine; the median is in the first. p99 of 100 requests is the slowest one or two,
    # which a loaded CI machine may delay past a second: it only has to stay ordered.
    for prefix, labels in (("traefik.", SHOP), ("traefik.service_", SERVICE)):
        median = value(batch, f"{prefix}latency_p50_seconds", **labels)
        p95 = value(batch, f"{prefix}latency_p95_seconds", **labels)
        p99 = value(batch, f"{prefix}latency_p99_seconds", **labels)
        assert 0.2 <= median <= 0.25, (prefix, median)
        assert 0.2 <= p95 <= 0.3, (prefix, p95)
        assert p95 <= p99 <= 5.0, (prefix, p95, p99)
    assert value(batch, "traefik.scrape_duration_seconds") > 0


@pytest.mark.integration
def test_server_error_ratio_counts_a_new_500_series_from_zero(traefik, backend):
    assert traefik.get("/shop/checkout") == 200
    collector, state, t0 = collector_for(traefik), TargetState(), time.time()
    scrape(collector, state, now=t0)

    backend.set(status=503)
    assert send(traefik, "/shop/cart", 6) == [503] * 6
    backend.set(status=200)
    assert send(traefik, "/shop/cart", 14) == [200] * 14
    batch = scrape(collector, state, now=t0 + 4)

    assert value(batch, "traefik.server_error_ratio", **SHOP) == pytest.approx(0.3)
    assert value(batch, "traefik.service_server_error_ratio", **SERVICE) == pytest.approx(0.3)
    assert value(batch, "traefik.requests_per_second", **SHOP) == 5.0
    # The checkout router saw nothing: a zero rate, and no ratio rather than a false 0.
    assert value(batch, "traefik.requests_per_second", **CHECKOUT) == 0.0
    assert value(batch, "traefik.server_error_ratio", **CHECKOUT) is None


@pytest.mark.integration
def test_open_connections_and_certificate_expiry(traefik, backend):
    port = int(traefik.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as idle:
        idle.sendall(b"GET /shop/cart HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        assert idle.recv(64).startswith(b"HTTP/1.1 200")
        batch = scrape(collector_for(traefik), TargetState())

    assert value(batch, "traefik.entrypoint_open_connections", entrypoint="web") >= 1.0
    assert value(batch, "traefik.entrypoint_open_connections", entrypoint="websecure") == 0.0
    # The fixture's certificate was made for 30 days.
    days = value(batch, "traefik.tls_cert_expiry_days", domain="shop.test")
    assert 29.9 < days <= 30.0


@pytest.mark.integration
def test_access_log_gives_exact_path_quantiles(traefik, backend):
    collector = collector_for(
        traefik, access_log=traefik.access_log, access_log_paths=["/shop/checkout"]
    )
    state, t0 = TargetState(), time.time()
    scrape(collector, state, now=t0)
    logged_before = _checkout_lines(traefik.access_log)

    backend.set(delay=0.05)
    send(traefik, "/shop/checkout?step=pay", 18)
    send(traefik, "/shop/cart", 5)
    backend.set(delay=0.4)
    send(traefik, "/shop/checkout", 2)
    wait_until(lambda: _checkout_lines(traefik.access_log) == logged_before + 20, "access log")
    batch = scrape(collector, state, now=t0 + 10)

    path = {"path": "/shop/checkout"}
    assert value(batch, "traefik.path_requests_per_second", **path) == 2.0
    # 18 of 20 took 0.05 s and 2 took 0.4 s (plus proxying, which a busy machine stretches).
    assert 0.05 <= value(batch, "traefik.path_latency_p50_seconds", **path) < 0.2
    assert 0.4 <= value(batch, "traefik.path_latency_p95_seconds", **path) < 0.6
    assert 0.4 <= value(batch, "traefik.path_latency_p99_seconds", **path) < 0.6


def _checkout_lines(path: Path) -> int:
    return path.read_bytes().count(b'"RequestPath":"/shop/checkout')


@pytest.mark.integration
def test_unreachable_traefik_is_refused():
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    url = f"http://127.0.0.1:{port}/metrics"
    target = TraefikCollector(labels={"instance": "gone"}, metrics_url=url)
    state = TargetState()
    assert value(scrape(target, state), "traefik.up") == 0.0
    assert state.error_code == "refused"


@pytest.mark.integration
def test_wrong_endpoint_is_bad_response_and_403_is_permission_denied(traefik, backend):
    # Traefik routes this to the backend, whose "ok" is no Prometheus text.
    wrong = TraefikCollector(labels={"instance": "edge-1"}, metrics_url=traefik.url + "/nope")
    state = TargetState()
    assert value(scrape(wrong, state), "traefik.up") == 0.0
    assert state.error_code == "bad_response"

    backend.set(status=403)
    assert value(scrape(wrong, state), "traefik.up") == 0.0
    assert state.error_code == "permission_denied"


# Recorded-payload and pure-function tests: no service needed.


def test_access_log_tail_follows_appends_partial_lines_and_rotation(tmp_path):
    recorded = (DATA / "access.json").read_bytes()
    log_file = tmp_path / "access.json"
    log_file.write_bytes(recorded)
    tail, t0 = AccessLogTail(log_file, ["/shop/checkout"]), time.time()
    assert list(tail.read(t0)) == [], "history is not replayed"

    first_line, rest = recorded.split(b"\n", 1)
    with log_file.open("ab") as handle:
        handle.write(recorded + rest[:40])  # the last line is still being written
    readings = {r.signal: r.value for r in tail.read(t0 + 10)}
    durations = sorted(json.loads(line)["Duration"] / 1e9 for line in recorded.splitlines()
                       if b"/shop/checkout" in line)
    assert readings["traefik.path_requests_per_second"] == len(durations) / 10
    assert readings["traefik.path_latency_p50_seconds"] == durations[len(durations) // 2]

    replacement = tmp_path / "access.json.new"
    replacement.write_bytes(rest.split(b"\n", 1)[0] + b"\n")
    os.replace(replacement, log_file)
    readings = {r.signal: r.value for r in tail.read(t0 + 20)}
    assert readings["traefik.path_requests_per_second"] == 1 / 10, "rotated file read anew"


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, {0.1: 10, 0.3: 30, 1.2: 40, float("inf"): 40}, 0.2),
        (0.25, {0.1: 10, 0.3: 30, 1.2: 40, float("inf"): 40}, 0.1),
        (0.99, {0.1: 10, 0.3: 30, 1.2: 30, float("inf"): 40}, 1.2),  # rank in +Inf
        (0.05, {0.1: 10, 0.3: 30, float("inf"): 30}, 0.015),  # lowest bucket starts at 0
    ],
)
def test_histogram_quantile_interpolates_inside_the_bucket(q, buckets, expected):
    assert histogram_quantile(q, buckets) == pytest.approx(expected)


def test_histogram_quantile_has_no_answer_without_observations():
    assert histogram_quantile(0.95, {0.1: 0, float("inf"): 0}) is None
    assert histogram_quantile(0.95, {0.1: 3, 0.3: 5}) is None  # no +Inf bucket


def test_histogram_quantile_agrees_with_promql(tmp_path):
    promtool = require_binary("promtool")
    counts = {0.05: 3, 0.1: 9, 0.25: 17, 0.5: 19, 1.0: 20, float("inf"): 20}
    expected = histogram_quantile(0.95, counts)
    series = "\n".join(
        f"      - series: 'h_bucket{{le=\"{'+Inf' if le == float('inf') else le}\"}}'\n"
        f"        values: '{n}'"
        for le, n in counts.items()
    )
    (tmp_path / "rules.yml").write_text("groups: []\n")
    (tmp_path / "test.yml").write_text(f"""rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
{series}
    promql_expr_test:
      - expr: histogram_quantile(0.95, h_bucket)
        eval_time: 0m
        exp_samples:
          - labels: '{{}}'
            value: {expected!r}
""")
    result = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
