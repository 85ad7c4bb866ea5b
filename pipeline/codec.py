"""Wire format of the samples topic: a versioned, columnar envelope.

One message carries many samples. Layout, all integers little-endian::

    0   4   magic b"TWSB"
    4   1   version (1)
    5   3   reserved, zero
    8   4   number of series S
    12  4   number of samples N
    16  4   length L of the series dictionary in bytes
    20  L   series dictionary: the S canonical series keys, UTF-8, joined by "\\n"
    ..  p   zero padding to a multiple of 8
    ..  8N  ts, float64 seconds since the epoch
    ..  8N  value, float64
    ..  4N  series index, uint32, into the dictionary

Columns decode with ``numpy.frombuffer`` and the dictionary is parsed once per new
series (keys are cached), which is what lets one core move millions of samples a second.
Canonical keys escape newlines, so "\\n" is a safe separator.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from tillwatch.errors import DecodeError, InvalidSample
from tillwatch.sample import MAX_TS, MIN_TS, SampleBatch, Series

MAGIC = b"TWSB"
VERSION = 1
_HEADER = struct.Struct("<4sB3xIII")
_CACHE_LIMIT = 200_000
_DICTIONARY_CACHE = 64


@dataclass(frozen=True, slots=True)
class Rejected:
    """Samples of a message that broke the contract, with the dead-letter reason."""

    reason: str
    detail: str
    batch: SampleBatch | None = None


@dataclass(slots=True)
class Decoded:
    """The valid samples of a message and what was rejected from it."""

    batch: SampleBatch
    rejected: list[Rejected] = field(default_factory=list)


def encode(batch: SampleBatch) -> bytes:
    """Encode a batch into one message."""
    keys = "\n".join(series.key for series in batch.series).encode("utf-8")
    header = _HEADER.pack(MAGIC, VERSION, len(batch.series), len(batch), len(keys))
    padding = b"\0" * (-(len(header) + len(keys)) % 8)
    return b"".join(
        (
            header,
            keys,
            padding,
            np.ascontiguousarray(batch.ts, dtype="<f8").tobytes(),
            np.ascontiguousarray(batch.value, dtype="<f8").tobytes(),
            np.ascontiguousarray(batch.series_ix, dtype="<u4").tobytes(),
        )
    )


class Decoder:
    """Decodes messages, remembering the series it has already validated."""

    def __init__(self) -> None:
        self._known: dict[str, Series] = {}
        # A collector sends the same dictionary scrape after scrape: remember whole
        # dictionaries too, so a repeat costs one bytes hash instead of a lookup per key.
        self._dictionaries: dict[bytes, tuple[list[Series], dict[int, InvalidSample]]] = {}

    def decode(self, message: bytes) -> Decoded:
        """Decode one message, splitting off invalid samples with their reason.

        Raises:
            DecodeError: when the message as a whole cannot be read.
        """
        n_series, n_samples, keys_blob, columns_at = _read_header(message)
        ts, value, series_ix = _read_columns(message, columns_at, n_samples)
        series, bad_series = self._dictionary(keys_blob, n_series)

        batch = SampleBatch(series, series_ix, ts, value)
        return _split_invalid(batch, bad_series)

    def _dictionary(
        self, blob: bytes, count: int
    ) -> tuple[list[Series], dict[int, InvalidSample]]:
        known = self._dictionaries.get(blob)
        if known is None:
            if len(self._dictionaries) >= _DICTIONARY_CACHE:
                self._dictionaries.clear()
            known = self._dictionaries[blob] = self._series(blob, count)
        return known

    def _series(self, blob: bytes, count: int) -> tuple[list[Series], dict[int, InvalidSample]]:
        keys = blob.decode("utf-8", errors="strict").split("\n") if count else []
        if len(keys) != count:
            raise DecodeError(
                "bad_dictionary", f"dictionary has {len(keys)} keys, header says {count}"
            )

        if len(self._known) > _CACHE_LIMIT:
            self._known.clear()
        series: list[Series] = []
        bad: dict[int, InvalidSample] = {}
        for ix, key in enumerate(keys):
            known = self._known.get(key)
            if known is None:
                known = self._learn(key, ix, bad)
            series.append(known)
        return series, bad

    def _learn(self, key: str, ix: int, bad: dict[int, InvalidSample]) -> Series:
        try:
            known = self._known[key] = Series.from_key(key)
        except InvalidSample as error:
            # Keep a placeholder so indexes stay aligned; its samples are rejected below.
            bad[ix] = error
            known = Series(signal="invalid.series", labels={}, key=key, id=0)
        return known


def _read_header(message: bytes) -> tuple[int, int, bytes, int]:
    if len(message) < _HEADER.size:
        raise DecodeError(
            "truncated", f"message of {len(message)} bytes is shorter than a header"
        )

    magic, version, n_series, n_samples, keys_len = _HEADER.unpack_from(message)
    if magic != MAGIC:
        raise DecodeError("bad_magic", f"message starts with {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise DecodeError(
            "unknown_version", f"wire version {version}, this build reads {VERSION}"
        )

    keys_end = _HEADER.size + keys_len
    columns_at = keys_end + (-keys_end % 8)
    if len(message) != columns_at + 20 * n_samples:
        raise DecodeError(
            "truncated",
            f"message has {len(message)} bytes, header implies {columns_at + 20 * n_samples}",
        )
    return n_series, n_samples, message[_HEADER.size : keys_end], columns_at


def _read_columns(message: bytes, at: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ts = np.frombuffer(message, dtype="<f8", count=n, offset=at)
    value = np.frombuffer(message, dtype="<f8", count=n, offset=at + 8 * n)
    series_ix = np.frombuffer(message, dtype="<u4", count=n, offset=at + 16 * n)
    return ts, value, series_ix


def _split_invalid(batch: SampleBatch, bad_series: dict[int, InvalidSample]) -> Decoded:
    if len(batch) and int(batch.series_ix.max()) >= len(batch.series):
        raise DecodeError("bad_series_index", "a sample points past the series dictionary")

    checks = [
        ("non_finite_value", "value is NaN or infinite", ~np.isfinite(batch.value)),
        (
            "bad_timestamp",
            "ts is not seconds since the epoch",
            ~((batch.ts >= MIN_TS) & (batch.ts < MAX_TS)),
        ),
    ]
    for ix, error in bad_series.items():
        checks.append((error.code, str(error), batch.series_ix == ix))

    rejected: list[Rejected] = []
    keep = np.ones(len(batch), dtype=bool)
    for reason, detail, mask in checks:
        mask &= keep
        if mask.any():
            rejected.append(Rejected(reason, detail, batch.select(mask)))
            keep &= ~mask
    return Decoded(batch if keep.all() else batch.select(keep), rejected)
