"""Dead-lettering: bad messages and bad samples leave with their reason; good ones flow."""

import base64
import json

import numpy as np
import pytest
from prometheus_client import REGISTRY

from pipeline.codec import Decoder, encode
from pipeline.deadletter import deadletter_record, decode_samples
from pipeline.memory import MemoryStream
from pipeline.stream import TOPIC_DEADLETTER, TOPIC_SAMPLES, Record
from tillwatch.sample import SampleBatch, Series


def _batch(n: int = 12, seed: int = 3) -> SampleBatch:
    rng = np.random.default_rng(seed)
    series = [Series.of("queue.depth", {"channel": f"c{i}"}) for i in range(4)]
    ix = np.arange(n, dtype=np.uint32) % 4
    return SampleBatch(series, ix, 1.75e9 + np.arange(n, dtype=np.float64), rng.random(n))


def _record(value: bytes, offset: int = 0) -> Record:
    return Record(TOPIC_SAMPLES, 0, offset, None, value)


def _dead_letters(stream: MemoryStream) -> list[dict]:
    reader = stream.consumer(TOPIC_DEADLETTER, group="audit")
    return [json.loads(r.value) for r in reader.poll(timeout=0.01, max_records=10_000)]


def _count(stage: str, reason: str) -> float:
    labels = {"stage": stage, "reason": reason}
    return REGISTRY.get_sample_value("tillwatch_deadlettered_total", labels) or 0.0


def test_record_of_undecodable_bytes_carries_them_in_base64():
    raw = b"\xffnot a sample batch"

    record = json.loads(deadletter_record("sink", "bad_magic", "starts with junk", "t", raw))

    assert base64.b64decode(record["payload_base64"]) == raw
    assert record["reason"] == "bad_magic" and record["stage"] == "sink"
    assert record["source_topic"] == "t"
    assert record["detail"] == "starts with junk" and record["time"] > 1.7e9


def test_record_of_refused_samples_lists_them_as_json_objects():
    batch = _batch(2)
    batch.value[1] = np.nan

    record = json.loads(deadletter_record("detector", "non_finite_value", "NaN", "t", batch))

    first, second = record["samples"]
    assert first["series"] == 'queue.depth{channel="c0"}'
    assert first["labels"] == {"channel": "c0"}
    assert second["value"] == "nan" and second["ts"] == 1.75e9 + 1


def test_good_samples_flow_and_bad_messages_are_dead_lettered():
    stream, good = MemoryStream(), _batch()
    before = _count("unit-a", "bad_magic")
    records = [_record(encode(good), 0), _record(b"JUNK" + bytes(40), 1), _record(b"", 2)]

    batches = decode_samples(records, Decoder(), stream, stage="unit-a")

    assert [list(b.samples()) for b in batches] == [list(good.samples())]
    letters = _dead_letters(stream)
    assert sorted(letter["reason"] for letter in letters) == ["bad_magic", "truncated"]
    assert _count("unit-a", "bad_magic") == before + 1
    assert REGISTRY.get_sample_value("tillwatch_samples_in_total", {"stage": "unit-a"}) == 12


def test_invalid_samples_are_split_from_their_message():
    stream, batch = MemoryStream(), _batch()
    batch.value[[0, 5]] = [np.inf, np.nan]
    batch.ts[7] = 12.0

    [kept] = decode_samples([_record(encode(batch))], Decoder(), stream, stage="unit-b")

    assert len(kept) == 9
    letters = {letter["reason"]: letter for letter in _dead_letters(stream)}
    assert sorted(letters) == ["bad_timestamp", "non_finite_value"]
    assert [s["value"] for s in letters["non_finite_value"]["samples"]] == ["inf", "nan"]
    assert letters["bad_timestamp"]["samples"][0]["ts"] == 12.0


@pytest.mark.parametrize("seed", [11, 12])
def test_corrupted_messages_never_raise(seed):
    rng = np.random.default_rng(seed)
    message = encode(_batch(40))
    corrupted = []
    for offset in range(300):
        damaged = bytearray(message)
        for at in rng.integers(0, len(damaged), size=rng.integers(1, 6)):
            damaged[at] = rng.integers(0, 256)
        corrupted.append(_record(bytes(damaged[: rng.integers(1, len(damaged) + 1)]), offset))
    stream = MemoryStream(max_buffered=100_000)

    batches = decode_samples(corrupted, Decoder(), stream, stage=f"fuzz-{seed}")

    letters = _dead_letters(stream)
    counted = sum(_count(f"fuzz-{seed}", reason) for reason in {x["reason"] for x in letters})
    assert len(letters) > 100 and counted == len(letters)
    assert all(len(batch) <= 40 for batch in batches)


def test_a_full_dead_letter_topic_does_not_stop_the_stage():
    stream = MemoryStream(max_buffered=1, publish_timeout=0.01)
    stream.consumer(TOPIC_DEADLETTER, group="nobody-reads")
    junk = [_record(b"JUNK" + bytes(20), i) for i in range(3)]

    assert decode_samples([*junk, _record(encode(_batch()))], Decoder(), stream, "full") != []
    dropped = REGISTRY.get_sample_value(
        "tillwatch_stream_dropped_total", {"topic": TOPIC_DEADLETTER}
    )
    assert dropped is not None and dropped >= 2
