"""Reading values out of a collector's batch in tests."""

from __future__ import annotations

from tillwatch.sample import SampleBatch


def values(batch: SampleBatch, signal: str, **labels: str) -> list[float]:
    """Every value of ``signal`` in the batch whose labels include ``labels``."""
    return [
        sample.value
        for sample in batch.samples()
        if sample.signal == signal and labels.items() <= dict(sample.labels).items()
    ]


def value(batch: SampleBatch, signal: str, **labels: str) -> float:
    """The one value of ``signal`` with ``labels``; fails when there is not exactly one."""
    found = values(batch, signal, **labels)
    assert len(found) == 1, f"{signal} {labels}: expected one value, found {found}"
    return found[0]
