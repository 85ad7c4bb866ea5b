"""The anomaly verdict: what a detector publishes on ``tillwatch.anomalies``.

Anomalies are few next to samples, so they travel as JSON, one object per message,
keyed by series id.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from tillwatch.errors import DecodeError

Direction = Literal["up", "down", "none"]
# Key of ``Anomaly.extra`` set to 1 on a reminder: the event was reported at its onset and
# still goes on (a rule still firing, an ensemble event its view still sees). A reminder
# keeps the event's incident open; it is not fresh evidence of anything new.
REMINDER = "reminder"


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A detector's verdict on one sample of one series.

    Attributes:
        ts: time of the sample judged, seconds since the epoch.
        series_id: the series' stable 64-bit id.
        signal: the series' signal, e.g. ``redis.hit_ratio``.
        labels: the series' labels.
        score: calibrated anomaly score in [0, 1]; high means anomalous.
        observed: the value seen.
        expected: the value the detector expected.
        lower: lower edge of the expected band.
        upper: upper edge of the expected band.
        direction: ``up`` when observed is above the band, ``down`` below, else ``none``.
        detector: which detector (or ensemble member) fired.
        explanation: one sentence a person can read.
        extra: further figures of the verdict by name (:data:`REMINDER` marks a reminder).
    """

    ts: float
    series_id: int
    signal: str
    labels: dict[str, str]
    score: float
    observed: float
    expected: float
    lower: float
    upper: float
    direction: Direction
    detector: str
    explanation: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def is_kpi(self) -> bool:
        """Whether the series is a business KPI (``kpi.`` signals)."""
        return self.signal.startswith("kpi.")

    @property
    def service(self) -> str:
        """The service the series belongs to, or its source when unlabelled."""
        return self.labels.get("service") or self.signal.split(".", 1)[0]

    def to_json(self) -> bytes:
        """Encode for the anomalies topic."""
        return json.dumps(asdict(self), separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, payload: bytes) -> Anomaly:
        """Decode a message of the anomalies topic.

        Raises:
            DecodeError: when the payload is not an anomaly object.
        """
        try:
            return cls(**json.loads(payload))
        except (ValueError, TypeError) as error:
            raise DecodeError("bad_anomaly", f"not an anomaly record: {error}") from error
