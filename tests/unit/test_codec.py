"""The samples wire codec: round trip, versioning, and splitting off invalid samples."""

import struct

import numpy as np
import pytest

from pipeline.codec import MAGIC, Decoder, encode
from tillwatch.errors import DecodeError
from tillwatch.sample import SampleBatch, Series


def _batch(n_series: int = 50, per_series: int = 3, seed: int = 7) -> SampleBatch:
    rng = np.random.default_rng(seed)
    series = [Series.of("redis.hit_ratio", {"instance": f"cache-{i}"}) for i in range(n_series)]
    series_ix = np.tile(np.arange(n_series, dtype=np.uint32), per_series)
    ts = 1.7e9 + np.repeat(np.arange(per_series, dtype=np.float64) * 15, n_series)
    return SampleBatch(series, series_ix, ts, rng.random(series_ix.size))


def test_round_trip_preserves_every_sample():
    batch = _batch()

    decoded = Decoder().decode(encode(batch))

    assert decoded.rejected == []
    assert list(decoded.batch.samples()) == list(batch.samples())
    assert decoded.batch.series_ids().tolist() == batch.series_ids().tolist()


def test_empty_batch_round_trips():
    decoded = Decoder().decode(encode(SampleBatch.empty()))

    assert len(decoded.batch) == 0 and decoded.rejected == []


def test_decoder_reuses_known_series_across_messages():
    decoder, batch = Decoder(), _batch()

    first = decoder.decode(encode(batch)).batch
    second = decoder.decode(encode(batch)).batch

    assert all(a is b for a, b in zip(first.series, second.series, strict=True))


def test_non_finite_values_are_split_off_with_their_reason():
    batch = _batch()
    batch.value[[2, 5]] = [np.nan, np.inf]

    decoded = Decoder().decode(encode(batch))

    assert len(decoded.batch) == len(batch) - 2
    [rejected] = decoded.rejected
    assert rejected.reason == "non_finite_value"
    assert len(rejected.batch) == 2


def test_invalid_series_key_rejects_only_its_samples():
    good = Series.of("queue.depth", {"channel": "root"})
    bad = Series(signal="Not A Signal", labels={}, key="Not A Signal{}", id=1)
    batch = SampleBatch(
        [good, bad],
        np.array([0, 1, 0], np.uint32),
        np.full(3, 1.7e9),
        np.array([1.0, 2.0, 3.0]),
    )

    decoded = Decoder().decode(encode(batch))

    assert decoded.batch.value.tolist() == [1.0, 3.0]
    assert [r.reason for r in decoded.rejected] == ["bad_signal"]


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda m: b"", "truncated"),
        (lambda m: b"XXXX" + m[4:], "bad_magic"),
        (lambda m: m[:4] + bytes([9]) + m[5:], "unknown_version"),
        (lambda m: m[:-3], "truncated"),
        (lambda m: m + b"\0" * 8, "truncated"),
    ],
)
def test_undecodable_messages_raise_a_decode_error_with_a_code(mutate, code):
    message = encode(_batch())

    with pytest.raises(DecodeError) as error:
        Decoder().decode(mutate(message))

    assert error.value.code == code


def test_series_index_past_the_dictionary_is_refused():
    batch = _batch(n_series=2, per_series=1)
    message = bytearray(encode(batch))
    struct.pack_into("<I", message, len(message) - 4, 99)

    with pytest.raises(DecodeError) as error:
        Decoder().decode(bytes(message))

    assert error.value.code == "bad_series_index"
    assert message[:4] == MAGIC
