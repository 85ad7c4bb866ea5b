"""Logs as text or JSON lines; spans around stage batches when tracing is on."""

import json
import logging

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tillwatch import logs, tracing


def test_json_logs_are_one_object_per_line_with_lazy_arguments_applied(capsys):
    logs.setup("INFO", "json")
    try:
        logging.getLogger("tillwatch.test").warning(
            "scrape of %s failed: %s", "redis:a", "refused"
        )
    finally:
        logs.setup("WARNING", "text")

    entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "tillwatch.test"
    assert entry["message"] == "scrape of redis:a failed: refused"


def test_stage_span_records_the_stage_and_record_count():
    provider = tracing.setup("console")
    assert provider is not None
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    with tracing.stage_span("sink", 12):
        pass

    [span] = [s for s in exporter.get_finished_spans() if s.name == "tillwatch.sink.batch"]
    assert span.attributes["tillwatch.stage"] == "sink"
    assert span.attributes["tillwatch.records"] == 12


def test_tracing_off_installs_no_provider():
    assert tracing.setup("off") is None
