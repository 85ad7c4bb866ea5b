"""Recordings: round trips in both formats, bad lines reported with their line, pacing."""

from __future__ import annotations

import io

import numpy as np
import pytest

from estate.simulator import Simulator
from pipeline.replay import (
    Pacer,
    ReplayError,
    format_labels,
    parse_labels,
    read_csv,
    read_jsonl,
    read_recording,
    write_csv,
    write_jsonl,
    write_recording,
)
from tillwatch.errors import InvalidSample
from tillwatch.sample import SampleBatch, series_key


def _flat(batches) -> list[tuple[float, str, float]]:
    return [
        (s.ts, series_key(s.signal, s.labels), s.value) for b in batches for s in b.samples()
    ]


@pytest.fixture(scope="module")
def recorded() -> list[SampleBatch]:
    return list(Simulator(seed=4).run(duration=3 * 3600, chunk_steps=30))


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_round_trip_keeps_every_sample_in_file_order(tmp_path, recorded, suffix):
    path = tmp_path / f"week.{suffix}"

    written = write_recording(recorded, path)
    chunks = list(read_recording(path, chunk_size=1000))

    assert written == sum(len(b) for b in recorded) > 10_000
    assert all(len(c.batch) <= 1000 for c in chunks) and not any(c.rejects for c in chunks)
    assert _flat(c.batch for c in chunks) == _flat(recorded)


def test_labels_with_separators_survive_the_csv_round_trip():
    labels = {"service": "odoo", "path": "a=b;c\\d", "store": "Bruxelles, centre"}

    assert parse_labels(format_labels(labels)) == labels
    assert parse_labels("") == {}
    batch = SampleBatch.from_samples([])
    assert write_csv([batch], io.StringIO()) == 0


def test_csv_label_values_are_escaped_on_disk():
    text = format_labels({"b": "x;y", "a": "1=2"})

    assert text == "a=1\\=2;b=x\\;y"


JSONL = """\
{"ts": 1767571260.0, "signal": "redis.hit_ratio", "labels": {"service": "redis"}, "value": 0.97}
not json at all
{"ts": 1767571260.0, "signal": "redis.hit_ratio", "labels": {"service": "redis"}}

{"ts": 1767571260.0, "signal": "Redis Hit", "labels": {}, "value": 1}
{"ts": 1767571260.0, "signal": "redis.hit_ratio", "labels": {"service": 5}, "value": 1}
{"ts": 1767571320.0, "signal": "redis.hit_ratio", "labels": {"service": "redis"}, "value": NaN}
{"ts": "soon", "signal": "redis.hit_ratio", "labels": {"service": "redis"}, "value": 1}
{"ts": 12, "signal": "redis.hit_ratio", "labels": {"service": "redis"}, "value": 1}
[1, 2, 3]
{"ts": 1767571380.0, "signal": "redis.hit_ratio", "labels": {"service": "redis"}, "value": 0.5}
"""


def test_malformed_json_lines_are_rejected_with_file_line_and_reason(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(JSONL)

    chunks = list(read_jsonl(path))
    rejects = [r for c in chunks for r in c.rejects]

    assert [(r.line, r.reason) for r in rejects] == [
        (2, "bad_json"),
        (3, "bad_record"),
        (5, "bad_signal"),
        (6, "bad_label"),
        (7, "non_finite_value"),
        (8, "bad_number"),
        (9, "bad_timestamp"),
        (10, "bad_record"),
    ]
    assert str(rejects[0]).startswith(f"{path}:2: bad_json: ")
    assert rejects[0].text == "not json at all"
    values = np.concatenate([c.batch.value for c in chunks])
    np.testing.assert_array_equal(values, [0.97, 0.5])


CSV = """\
ts,signal,labels,value
1767571260.0,redis.hit_ratio,service=redis;instance=r1,0.97
1767571260.0,redis.hit_ratio,service=redis
1767571260.0,redis.hit_ratio,service,0.5
1767571260.0,redis.hit_ratio,service=redis,lots
1767571260.0,redis.hit_ratio,service=a;service=b,1

1767571320.0,redis.hit_ratio,"service=redis;instance=r1",0.5
"""


def test_malformed_csv_lines_are_rejected_with_file_line_and_reason(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(CSV)

    chunks = list(read_csv(path))
    rejects = [r for c in chunks for r in c.rejects]

    assert [(r.line, r.reason) for r in rejects] == [
        (3, "bad_csv"),
        (4, "bad_label"),
        (5, "bad_number"),
        (6, "bad_label"),
    ]
    assert "twice" in rejects[-1].detail
    samples = [s for c in chunks for s in c.batch.samples()]
    assert [s.value for s in samples] == [0.97, 0.5]
    assert samples[1].labels == {"service": "redis", "instance": "r1"}


def test_csv_without_its_header_is_refused(tmp_path):
    path = tmp_path / "headless.csv"
    path.write_text("1767571260.0,redis.hit_ratio,service=redis,0.97\n")

    with pytest.raises(ReplayError, match=r"headless.csv:1: expected the CSV header"):
        list(read_csv(path))


def test_a_missing_recording_is_an_error_naming_it(tmp_path):
    with pytest.raises(ReplayError, match="nowhere.jsonl"):
        list(read_jsonl(tmp_path / "nowhere.jsonl"))


def test_bad_label_text_raises_invalid_sample():
    with pytest.raises(InvalidSample, match="k=v"):
        parse_labels("service=redis;instance")


def test_writers_count_what_they_write(recorded):
    out = io.StringIO()

    count = write_jsonl(recorded[:2], out)

    assert count == len(recorded[0]) + len(recorded[1])
    assert out.getvalue().count("\n") == count


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_pacer_replays_sample_time_at_the_given_speed():
    clock = FakeClock()
    pacer = Pacer(60, clock=clock, sleep=clock.sleep)

    assert pacer.delay(1_000_000) == 0
    assert pacer.delay(1_000_060) == 1.0
    clock.now += 0.25
    assert pacer.delay(1_000_060) == 0.75
    for ts in (1_000_060, 1_000_120, 1_000_120):
        pacer.wait(ts)
    assert clock.slept == [0.75, 1.0]


def test_pacer_never_waits_for_a_late_sample_or_at_speed_zero():
    clock = FakeClock()
    paced = Pacer(10, clock=clock, sleep=clock.sleep)
    paced.delay(500.0)
    clock.now += 30

    assert paced.delay(600.0) == 0
    assert Pacer(0, clock=clock).delay(10**9) == 0


@pytest.mark.parametrize("speed", [-1.0, float("nan"), float("inf")])
def test_pacer_refuses_a_meaningless_speed(speed):
    with pytest.raises(ReplayError, match="replay speed"):
        Pacer(speed)
