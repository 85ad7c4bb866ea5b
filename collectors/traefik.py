"""Traefik: request rate, server errors and latency per router and service, from /metrics.

Traefik exports counters and cumulative histograms; this collector turns two consecutive
scrapes into interval values. Latency quantiles are estimated from the increase of each
``le`` bucket over the interval, interpolating linearly inside the bucket the quantile
falls in, as PromQL's ``histogram_quantile`` does (see docs/collectors.md for the buckets
to configure). The share of requests slower than a latency objective, which a latency
SLO's burn rate needs, is read off the bucket at the objective. Optionally it tails
Traefik's JSON access log for exact quantiles on a few chosen paths such as
``/shop/checkout``.

A series that first appears between two scrapes (Traefik creates ``code="500"`` on the
first server error) counts from zero: all of its value arose during the interval.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from collectors.base import Collector, Reading, SignalSpec
from tillwatch.errors import ConfigError, SourceError

log = logging.getLogger(__name__)

QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
HTTP_CODES = {401: "auth_failed", 403: "permission_denied"}
SECONDS_PER_DAY = 86_400.0
# One of Traefik's default bucket bounds (0.1, 0.3, 1.2, 5 s), so the default works as is.
DEFAULT_LATENCY_OBJECTIVE = 0.3

# A counter kept between scrapes: (metric, sorted label pairs).
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]
Counts = Mapping[SeriesKey, float]
# Parsed /metrics: sample name -> [(labels, value)].
Samples = Mapping[str, list[tuple[dict[str, str], float]]]
# Interval increase per bucket bound ``le``, per router (or service) naming labels.
Histograms = Mapping[tuple[str, ...], Mapping[float, float]]


@dataclass(frozen=True, slots=True)
class Scope:
    """Routers or services: Traefik's metric prefix, the signal prefix, the naming labels."""

    metric: str
    signal: str
    keys: tuple[str, ...]


# Routers are what a shop's URLs map to, so their signals take the short names.
ROUTERS = Scope("traefik_router", "traefik.", ("router", "service"))
SERVICES = Scope("traefik_service", "traefik.service_", ("service",))
SCOPES = (ROUTERS, SERVICES)


def _scope_signals(scope: Scope, what: str) -> tuple[SignalSpec, ...]:
    specs = [
        SignalSpec(f"{scope.signal}requests_per_second", "1/s", f"requests per {what} per s"),
        SignalSpec(f"{scope.signal}server_error_ratio", "1", f"5xx share of requests, {what}"),
        SignalSpec(
            f"{scope.signal}slow_request_ratio", "1",
            f"share of requests slower than the latency objective (le: bound used), {what}",
        ),
    ]
    for name, q in QUANTILES.items():
        help_text = f"latency quantile {q:g} per {what}, estimated from histogram buckets"
        specs.append(SignalSpec(f"{scope.signal}latency_{name}_seconds", "s", help_text))
    return tuple(specs)


class TraefikCollector(Collector):
    """Reads one Traefik instance's Prometheus endpoint, and optionally its access log.

    Args:
        labels: the target's labels (``service``, ``instance`` ...).
        metrics_url: Traefik's Prometheus endpoint, such as ``http://traefik:8082/metrics``.
        access_log: Traefik's JSON access log file, to tail for exact path quantiles.
        access_log_paths: request path prefixes to report from the access log.
        timeout: seconds allowed for the metrics request.
        latency_objective_seconds: a request slower than this is slow (the latency SLO's
            threshold); it should be a bound of Traefik's request duration buckets, else
            the next bound above it is used.

    Raises:
        ConfigError: when the latency objective is not a positive number of seconds.
    """

    source = "traefik"
    signals = (
        *_scope_signals(ROUTERS, "router"),
        *_scope_signals(SERVICES, "service"),
        SignalSpec("traefik.entrypoint_open_connections", "1", "open connections per entry"),
        SignalSpec("traefik.tls_cert_expiry_days", "d", "days until a certificate expires"),
        SignalSpec("traefik.path_requests_per_second", "1/s", "access-log requests per path"),
        *(
            SignalSpec(f"traefik.path_latency_{name}_seconds", "s", f"{name} latency per path")
            for name in QUANTILES
        ),
    )

    def __init__(
        self,
        *,
        labels: Mapping[str, str],
        metrics_url: str,
        access_log: Path | None = None,
        access_log_paths: Sequence[str] = (),
        timeout: float = 5.0,
        latency_objective_seconds: float = DEFAULT_LATENCY_OBJECTIVE,
    ) -> None:
        problems = self.check_options({"latency_objective_seconds": latency_objective_seconds})
        if problems:
            raise ConfigError(f"traefik collector: {'; '.join(problems)}")
        super().__init__(labels=labels)
        self.metrics_url = metrics_url
        self.timeout = timeout
        self.latency_objective = float(latency_objective_seconds)
        self._warned: set[float | None] = set()
        self._previous: dict[SeriesKey, float] | None = None
        self._previous_ts = 0.0
        self._tail = AccessLogTail(access_log, access_log_paths) if access_log else None

    @staticmethod
    def check_options(options: Mapping[str, object]) -> list[str]:
        """Problems with option values, each as ``options.<key>: problem; fix``."""
        objective = options.get("latency_objective_seconds", DEFAULT_LATENCY_OBJECTIVE)
        if _positive_seconds(objective):
            return []
        return [
            f"options.latency_objective_seconds: must be a positive number of seconds, found "
            f"{objective!r}; set a bound of Traefik's request duration buckets, e.g. 0.3"
        ]

    def read(self, now: float) -> Iterator[Reading]:
        """Scrape /metrics (and the access log) once.

        Raises:
            SourceError: when the endpoint or the log cannot be read or parsed.
        """
        samples = self._parse(self._fetch())
        yield from self._gauges(samples, now)
        yield from self._interval(samples, now)
        if self._tail is not None:
            yield from self._tail.read(now)

    def _fetch(self) -> str:
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=self.timeout) as response:
                return response.read().decode("utf-8")
        except urllib.error.HTTPError as failure:
            failure.close()
            code = HTTP_CODES.get(failure.code, "bad_response")
            raise SourceError(code, self._explain(f"HTTP {failure.code}")) from failure
        except (urllib.error.URLError, OSError) as failure:
            reason = getattr(failure, "reason", failure)
            code = "timeout" if isinstance(reason, socket.timeout | TimeoutError) else "refused"
            raise SourceError(code, self._explain(str(reason))) from failure

    def _explain(self, found: str) -> str:
        return (
            f"traefik collector: GET {self.metrics_url} failed: {found}; expected Prometheus "
            "text, check --metrics.prometheus.entrypoint and that Traefik listens there"
        )

    def _parse(self, text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
        samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        if "traefik_" not in text:
            raise SourceError("bad_response", self._explain("no traefik_ metric in the answer"))

        # Parsing is most of a scrape's cost: hand the parser only the series used here.
        wanted = "\n".join(line for line in text.splitlines() if line.startswith(WANTED))
        try:
            for family in text_string_to_metric_families(wanted + "\n"):
                for sample in family.samples:
                    samples[sample.name].append((sample.labels, sample.value))
        except ValueError as failure:
            found = f"unparsable text: {failure}"
            raise SourceError("bad_response", self._explain(found)) from failure
        return samples

    def _gauges(self, samples: Samples, now: float) -> Iterator[Reading]:
        connections: dict[str, float] = defaultdict(float)
        for labels, value in samples.get("traefik_open_connections", ()):
            connections[labels.get("entrypoint", "")] += value
        for entrypoint, total in sorted(connections.items()):
            labels = {"entrypoint": entrypoint}
            yield Reading("traefik.entrypoint_open_connections", total, labels)

        for labels, not_after in samples.get("traefik_tls_certs_not_after", ()):
            cert = {"domain": _domain(labels), "serial": labels.get("serial", "")}
            days_left = (not_after - now) / SECONDS_PER_DAY
            yield Reading("traefik.tls_cert_expiry_days", days_left, cert)

    def _interval(self, samples: Samples, now: float) -> Iterator[Reading]:
        current = _counters(samples)
        previous, seconds = self._previous, now - self._previous_ts
        self._previous, self._previous_ts = current, now
        if previous is None or seconds <= 0:
            return

        increases = _increases(previous, current)
        for scope in SCOPES:
            yield from _requests(scope, samples, increases, seconds)
            histograms = _histograms(scope, samples, increases)
            yield from _latencies(scope, histograms)
            yield from self._slow_ratios(scope, histograms)

    def _slow_ratios(self, scope: Scope, histograms: Histograms) -> Iterator[Reading]:
        for group, counts in sorted(histograms.items()):
            bound = objective_bound(self.latency_objective, counts)
            self._warn_once(bound)
            if bound is None:
                continue

            # No requests, no ratio, as for the error ratio.
            ratio = slow_ratio(bound, counts)
            if ratio is not None:
                named = {**dict(zip(scope.keys, group, strict=True)), "le": f"{bound:g}"}
                yield Reading(f"{scope.signal}slow_request_ratio", ratio, named)

    def _warn_once(self, bound: float | None) -> None:
        exact = bound is not None and math.isclose(bound, self.latency_objective)
        if exact or bound in self._warned:
            return
        self._warned.add(bound)
        objective = self.latency_objective
        if bound is None:
            log.warning(
                "%s: no request duration bucket at or above the latency objective %gs, so "
                "no slow_request_ratio; add %g to --metrics.prometheus.buckets",
                self.name, objective, objective,
            )
        else:
            log.warning(
                "%s: no request duration bucket at the latency objective %gs; counting "
                "requests slower than %gs (le=\"%g\") instead; add %g to "
                "--metrics.prometheus.buckets", self.name, objective, bound, bound, objective,
            )


# The only series read; a space or brace after the name keeps look-alikes out.
WANTED = tuple(
    f"{name}{end}"
    for name in (
        *(f"{scope.metric}_requests_total" for scope in SCOPES),
        *(f"{scope.metric}_request_duration_seconds_bucket" for scope in SCOPES),
        "traefik_open_connections",
        "traefik_tls_certs_not_after",
    )
    for end in ("{", " ")
)


def _positive_seconds(value: object) -> bool:
    # bool is an int to Python, but true is no number of seconds.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value > 0


def _domain(labels: Mapping[str, str]) -> str:
    # Certificates without a common name still carry their names in the SANs.
    return labels.get("cn") or labels.get("sans", "").split(",")[0]


def _counters(samples: Samples) -> dict[SeriesKey, float]:
    wanted = [f"{s.metric}_requests_total" for s in SCOPES]
    wanted += [f"{s.metric}_request_duration_seconds_bucket" for s in SCOPES]
    return {
        (name, tuple(sorted(labels.items()))): value
        for name in wanted
        for labels, value in samples.get(name, ())
    }


def _increases(previous: Counts, current: Counts) -> dict[SeriesKey, float]:
    """Return each counter's increase; a drop is a restart, a new series starts at 0."""
    increases = {}
    for key, value in current.items():
        before = previous.get(key, 0.0)
        increases[key] = value - before if value >= before else value
    return increases


def _requests(
    scope: Scope, samples: Samples, increases: Counts, seconds: float
) -> Iterator[Reading]:
    name = f"{scope.metric}_requests_total"
    totals: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for labels, _ in samples.get(name, ()):
        step = increases[(name, tuple(sorted(labels.items())))]
        counts = totals[tuple(labels.get(k, "") for k in scope.keys)]
        counts[0] += step
        counts[1] += step if labels.get("code", "").startswith("5") else 0.0

    for group, (total, errors) in sorted(totals.items()):
        named = dict(zip(scope.keys, group, strict=True))
        yield Reading(f"{scope.signal}requests_per_second", total / seconds, named)
        # No requests, no ratio: 0 would claim every request succeeded.
        if total > 0:
            yield Reading(f"{scope.signal}server_error_ratio", errors / total, named)


def _histograms(scope: Scope, samples: Samples, increases: Counts) -> Histograms:
    """Each router's (or service's) interval increase per ``le`` bucket."""
    name = f"{scope.metric}_request_duration_seconds_bucket"
    buckets: dict[tuple[str, ...], dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for labels, _ in samples.get(name, ()):
        step = increases[(name, tuple(sorted(labels.items())))]
        # Codes and methods are summed: the quantile is over all of the router's requests.
        buckets[tuple(labels.get(k, "") for k in scope.keys)][float(labels["le"])] += step
    return buckets


def _latencies(scope: Scope, histograms: Histograms) -> Iterator[Reading]:
    for group, counts in sorted(histograms.items()):
        named = dict(zip(scope.keys, group, strict=True))
        for quantile_name, q in QUANTILES.items():
            value = histogram_quantile(q, counts)
            if value is not None:
                yield Reading(f"{scope.signal}latency_{quantile_name}_seconds", value, named)


def objective_bound(objective: float, buckets: Iterable[float]) -> float | None:
    """The bucket bound a latency objective is judged at.

    Args:
        objective: the latency objective in seconds.
        buckets: the histogram's bucket bounds ``le``.

    Returns:
        The objective's own bound when the histogram has it, else the smallest finite bound
        above it (a histogram cannot tell latencies apart inside a bucket), or None when
        every finite bound lies below the objective.
    """
    above = [
        bound for bound in buckets
        if math.isfinite(bound) and (bound > objective or math.isclose(bound, objective))
    ]
    return min(above, default=None)


def slow_ratio(bound: float, buckets: Mapping[float, float]) -> float | None:
    """Share of observations above ``bound``, from cumulative bucket counts.

    Returns:
        The share, or None when the histogram holds no observation or lacks ``+Inf``.
    """
    total = buckets.get(math.inf, 0.0)
    if total <= 0:
        return None
    return (total - buckets.get(bound, 0.0)) / total


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Estimate quantile ``q`` from cumulative bucket counts, as PromQL does.

    Args:
        q: the quantile, in ``[0, 1]``.
        buckets: cumulative count per upper bound ``le``; ``inf`` must be present.

    Returns:
        The estimate, or None when the histogram holds no observation or lacks ``+Inf``.
        Inside the bucket the rank falls in, observations are taken as evenly spread; a
        rank in the ``+Inf`` bucket returns the highest finite bound, and the lowest
        bucket starts at 0.
    """
    bounds = sorted(buckets)
    if len(bounds) < 2 or not math.isinf(bounds[-1]) or buckets[bounds[-1]] <= 0:
        return None

    rank = q * buckets[bounds[-1]]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds[:-1]:
        count = buckets[bound]
        if count >= rank:
            in_bucket = count - lower_count
            if in_bucket <= 0:
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / in_bucket
        lower_bound, lower_count = bound, count
    return lower_bound


class AccessLogTail:
    """Follows Traefik's JSON access log and reports exact latency quantiles per path.

    Each read covers the lines written since the previous read. The first read only
    finds the end of the file, so history is not replayed as if it were one interval. A
    file that shrank or was replaced (rotation) is read again from its start.

    Args:
        path: the access log file (``--accesslog.format=json``).
        paths: request path prefixes to report, such as ``/shop/checkout``.
    """

    def __init__(self, path: Path, paths: Sequence[str]) -> None:
        self.path = Path(path)
        self.paths = tuple(paths)
        self._inode: int | None = None
        self._offset = 0
        self._last_ts: float | None = None
        # A byte test rejects most lines before paying for json.loads.
        self._needles = [f'"RequestPath":"{p}'.encode() for p in self.paths]

    def read(self, now: float) -> Iterator[Reading]:
        """Return the readings for the lines written since the previous read.

        Raises:
            SourceError: when the file cannot be read.
        """
        chunk, first = self._new_bytes()
        last_ts, self._last_ts = self._last_ts, now
        if first or last_ts is None or now <= last_ts:
            return

        durations = self._durations(chunk)
        for prefix in self.paths:
            yield from _path_readings(prefix, durations[prefix], now - last_ts)

    def _new_bytes(self) -> tuple[bytes, bool]:
        try:
            with open(self.path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                first = self._inode is None
                if first or stat.st_ino != self._inode or stat.st_size < self._offset:
                    self._offset = stat.st_size if first else 0
                    self._inode = stat.st_ino
                handle.seek(self._offset)
                chunk = handle.read()
        except OSError as failure:
            denied = isinstance(failure, PermissionError)
            code = "permission_denied" if denied else "bad_response"
            raise SourceError(code, f"traefik collector: cannot read access log {self.path}: "
                              f"{failure.strerror}; check --accesslog.filepath") from failure

        # A line still being written is left for the next read.
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        return complete, first

    def _durations(self, chunk: bytes) -> dict[str, list[float]]:
        durations: dict[str, list[float]] = {prefix: [] for prefix in self.paths}
        for line in chunk.splitlines():
            if not any(needle in line for needle in self._needles):
                continue
            entry = _json_line(line)
            path = str(entry.get("RequestPath", "")).split("?", 1)[0]
            for prefix in self.paths:
                if path.startswith(prefix) and "Duration" in entry:
                    durations[prefix].append(float(entry["Duration"]) / 1e9)
        return durations


def _json_line(line: bytes) -> dict:
    try:
        entry = json.loads(line)
    except ValueError:
        log.debug("skipping an access log line that is not JSON: %.80r", line)
        return {}
    return entry if isinstance(entry, dict) else {}


def _path_readings(prefix: str, durations: list[float], seconds: float) -> Iterator[Reading]:
    labels = {"path": prefix}
    yield Reading("traefik.path_requests_per_second", len(durations) / seconds, labels)
    if not durations:
        return

    values = np.quantile(np.asarray(durations), list(QUANTILES.values()))
    for name, value in zip(QUANTILES, values.tolist(), strict=True):
        yield Reading(f"traefik.path_latency_{name}_seconds", value, labels)
