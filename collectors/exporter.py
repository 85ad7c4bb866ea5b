"""Exposes the latest value of every collected series on /metrics, for an existing Prometheus.

A signal with an exporter equivalent keeps that name (``redis.memory_used_bytes`` is
served as ``redis_memory_used_bytes``, as redis_exporter names it), so dashboards built
on the usual exporters keep working; any other signal is served as ``tillwatch_`` plus
the signal with dots as underscores. The table is in docs/collectors.md.

Register it once: ``prometheus_client.REGISTRY.register(LatestValues())``, and feed it
every batch with :meth:`LatestValues.update`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as PrometheusCollector

from collectors.base import SignalSpec
from collectors.registry import COLLECTORS
from tillwatch.sample import SampleBatch, Series


def exported_name(signal: str, spec: SignalSpec | None) -> str:
    """Return the Prometheus name a signal is served under."""
    if spec is not None and spec.exporter_name:
        return spec.exporter_name
    return "tillwatch_" + signal.replace(".", "_")


def registered_specs() -> dict[str, SignalSpec]:
    """Every signal declared by a registered collector, by name."""
    return {name: spec for cls in COLLECTORS.values() for name, spec in cls.declared().items()}


class LatestValues(PrometheusCollector):
    """A prometheus_client collector serving the newest value of each series as a gauge.

    Args:
        specs: declared signals by name, for names and help; defaults to every registered
            collector's.
        max_age: seconds after which a series that stopped arriving is no longer served,
            so a removed target does not linger with its last value.
        clock: returns the current time in seconds since the epoch.
    """

    def __init__(
        self,
        specs: Mapping[str, SignalSpec] | None = None,
        *,
        max_age: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.specs = dict(registered_specs() if specs is None else specs)
        self.max_age = max_age
        self.clock = clock
        self._latest: dict[str, tuple[Series, float, float]] = {}
        self._lock = threading.Lock()

    def update(self, batch: SampleBatch) -> None:
        """Remember the newest value of every series in ``batch``."""
        columns = (batch.series_ix.tolist(), batch.ts.tolist(), batch.value.tolist())
        rows = zip(*columns, strict=True)
        with self._lock:
            for ix, ts, value in rows:
                series = batch.series[ix]
                known = self._latest.get(series.key)
                if known is None or known[1] <= ts:
                    self._latest[series.key] = (series, ts, value)

    def collect(self) -> Iterator[Metric]:
        """Yield one gauge family per exported name (called by prometheus_client)."""
        families: dict[str, GaugeMetricFamily] = {}
        for series, value in self._fresh():
            spec = self.specs.get(series.signal)
            name = exported_name(series.signal, spec)
            family = families.get(name)
            if family is None:
                help_text = spec.help if spec else f"tillwatch signal {series.signal}"
                family = families[name] = GaugeMetricFamily(name, help_text)
            family.add_sample(name, dict(series.labels), value)
        yield from families.values()

    def _fresh(self) -> list[tuple[Series, float]]:
        oldest = self.clock() - self.max_age
        with self._lock:
            for key in [k for k, (_, ts, _) in self._latest.items() if ts < oldest]:
                del self._latest[key]
            return [(series, value) for series, _, value in self._latest.values()]
