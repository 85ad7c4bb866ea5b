"""Dead-lettering: what a consuming stage does with a record it cannot use.

A message that does not decode, or the samples of a message that break the sample
contract, go to ``tillwatch.deadletter`` as one JSON record each, with the reason, so an
operator can see what was refused and why; the stage carries on with the rest.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections.abc import Iterable

from pipeline.codec import Decoder
from pipeline.stream import TOPIC_DEADLETTER, Record, Stream
from tillwatch.errors import DecodeError, StreamFull
from tillwatch.sample import SampleBatch
from tillwatch.telemetry import DEADLETTERED, SAMPLES_IN

log = logging.getLogger(__name__)


def deadletter_record(
    stage: str, reason: str, detail: str, source_topic: str, payload: bytes | SampleBatch
) -> bytes:
    """Build the JSON dead-letter record for one refused message or set of samples.

    Args:
        stage: The stage that refused it, such as ``sink`` or ``detector``.
        reason: The stable reason code, such as ``bad_magic`` or ``non_finite_value``.
        detail: What was wrong, for a person.
        source_topic: The topic the record was read from.
        payload: The raw message when it did not decode, else the refused samples.

    Returns:
        UTF-8 JSON with ``reason``, ``detail``, ``stage``, ``source_topic``, ``time`` and
        either ``payload_base64`` or ``samples``.
    """
    record: dict[str, object] = {
        "reason": reason,
        "detail": detail,
        "stage": stage,
        "source_topic": source_topic,
        "time": time.time(),
    }
    if isinstance(payload, SampleBatch):
        record["samples"] = _samples_json(payload)
    else:
        record["payload_base64"] = base64.b64encode(payload).decode("ascii")
    return json.dumps(record, allow_nan=False).encode("utf-8")


def _samples_json(batch: SampleBatch) -> list[dict[str, object]]:
    # The series key is kept as sent: for an invalid series it is the only faithful name.
    columns = zip(
        batch.series_ix.tolist(), batch.ts.tolist(), batch.value.tolist(), strict=True
    )
    return [
        {
            "ts": _number(ts),
            "series": batch.series[ix].key,
            "signal": batch.series[ix].signal,
            "labels": dict(batch.series[ix].labels),
            "value": _number(value),
        }
        for ix, ts, value in columns
    ]


def _number(value: float) -> float | str:
    return value if math.isfinite(value) else repr(value)


def decode_samples(
    records: Iterable[Record], decoder: Decoder, stream: Stream, stage: str
) -> list[SampleBatch]:
    """Decode sample messages, dead-lettering whatever cannot be used; never raises on input.

    Args:
        records: Records read from the samples topic.
        decoder: The stage's decoder (it caches the series it has seen).
        stream: Where the dead-letter records go.
        stage: The consuming stage, for metrics and dead-letter records.

    Returns:
        The valid samples of each message that had any, in the order read.
    """
    batches: list[SampleBatch] = []
    for record in records:
        try:
            decoded = decoder.decode(record.value)
        except (DecodeError, UnicodeDecodeError) as error:
            reason = getattr(error, "code", "bad_encoding")
            _deadletter(stream, stage, reason, str(error), record.topic, record.value)
            continue

        for rejected in decoded.rejected:
            payload = record.value if rejected.batch is None else rejected.batch
            _deadletter(stream, stage, rejected.reason, rejected.detail, record.topic, payload)
        if len(decoded.batch):
            SAMPLES_IN.labels(stage).inc(len(decoded.batch))
            batches.append(decoded.batch)
    return batches


def _deadletter(
    stream: Stream, stage: str, reason: str, detail: str, topic: str,
    payload: bytes | SampleBatch,
) -> None:
    DEADLETTERED.labels(stage, reason).inc()
    try:
        record = deadletter_record(stage, reason, detail, topic, payload)
        stream.publish(TOPIC_DEADLETTER, record)
    except StreamFull as error:
        # Nobody drains the dead letters; the stream counted the drop, the stage goes on.
        log.warning("%s: dead letter (%s) dropped: %s", stage, reason, error)
