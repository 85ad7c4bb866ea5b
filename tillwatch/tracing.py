"""OpenTelemetry spans around each stage's batch: off by default, console or OTLP on demand."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)

_tracer = trace.get_tracer("tillwatch")


def setup(mode: str, endpoint: str | None = None) -> TracerProvider | None:
    """Install a tracer provider for ``console`` or ``otlp``; ``off`` installs nothing."""
    if mode == "off":
        return None

    provider = TracerProvider(resource=Resource.create({"service.name": "tillwatch"}))
    if mode == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(
            endpoint=f"{endpoint.rstrip('/')}/v1/traces" if endpoint else None
        )
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


@contextmanager
def stage_span(stage: str, records: int) -> Iterator[None]:
    """A span around one batch of one stage; free when tracing is off."""
    with _tracer.start_as_current_span(f"tillwatch.{stage}.batch") as span:
        span.set_attribute("tillwatch.stage", stage)
        span.set_attribute("tillwatch.records", records)
        yield
