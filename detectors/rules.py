"""The rule table: which signals are judged against a known limit, and how.

A rule names its signals by a shell-style pattern (``fnmatch``, e.g.
``postgres.replica*_lag_seconds``) and optionally label patterns (``{"backup_type":
"full"}``); the first rule matching a series' signal and labels judges it instead of a
learning detector, because a known limit says more than any learned baseline: a backup's
age is a sawtooth, a certificate's days left a falling line, and a learning detector
would find both forever novel.

The built-in table (:data:`DEFAULT_RULES`) covers the collectors' signals with limits
that hold for most estates; a deployment passes its own to ``DetectorStage(rules=...)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import numpy as np

from detectors.burnrate import WORKBOOK_ALERTS, BurnRate
from detectors.threshold import Threshold
from tillwatch.anomaly import Direction


@dataclass(frozen=True, slots=True)
class ThresholdRule:
    """Fire after ``min_duration`` seconds beyond ``limit``; clear past ``clear``.

    Attributes:
        pattern: signals the rule judges (``fnmatch`` pattern).
        limit: the value not to pass.
        clear: hysteresis edge (``limit`` when omitted).
        min_duration: seconds beyond the limit before firing.
        above: True when values above the limit are bad.
        unit: unit of the limit, for explanations.
        labels: label patterns a series must match too (``fnmatch`` per label).
    """

    pattern: str
    limit: float
    clear: float | None = None
    min_duration: float = 0.0
    above: bool = True
    unit: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    kind = "threshold"

    def build(self, n_slots: int) -> Threshold:
        """A detector applying the rule to ``n_slots`` series."""
        return Threshold(n_slots, limit=self.limit, clear=self.clear,
                         min_duration=self.min_duration, above=self.above)

    def band(self, n: int) -> np.ndarray:
        """``(expected, lower, upper)`` rows: the limit and its hysteresis edge."""
        clear = self.limit if self.clear is None else self.clear
        edges = (self.limit, min(self.limit, clear), max(self.limit, clear))
        return np.tile(np.array(edges, dtype=float), (n, 1))

    def direction(self) -> Direction:
        """Where the bad side of the limit lies."""
        return "up" if self.above else "down"

    def explain(self, signal: str, observed: float, detector: Threshold,
                slot: int) -> str:
        """One sentence naming the rule, the limit and what was seen."""
        side, back = ("above", "below") if self.above else ("below", "above")
        clear = self.limit if self.clear is None else self.clear
        held = f" for {self.min_duration:g} s" if self.min_duration else ""
        return (f"threshold: {signal} {side} {self.limit:g}{self.unit}{held} "
                f"(observed {observed:g}{self.unit}; clears {back} {clear:g}{self.unit})")


@dataclass(frozen=True, slots=True)
class BurnRateRule:
    """Multi-window SLO burn-rate alert over a ratio signal (see :mod:`detectors.burnrate`).

    Attributes:
        pattern: ratio signals the rule judges (``fnmatch`` pattern), e.g. an error
            ratio or the share of requests slower than the latency objective.
        objective: the SLO as a fraction of good requests.
        alerts: ``(long minutes, short minutes, burn factor)`` per alert.
        labels: label patterns a series must match too (``fnmatch`` per label).
    """

    pattern: str
    objective: float = 0.999
    alerts: tuple[tuple[int, int, float], ...] = WORKBOOK_ALERTS
    labels: Mapping[str, str] = field(default_factory=dict)

    kind = "burn_rate"

    def build(self, n_slots: int) -> BurnRate:
        """A detector applying the rule to ``n_slots`` series."""
        return BurnRate(n_slots, objective=self.objective, alerts=self.alerts)

    def band(self, n: int) -> np.ndarray:
        """``(expected, lower, upper)`` rows: the budget ratio, 0, the fast-burn ratio."""
        budget = 1.0 - self.objective
        fastest = max(factor for _, _, factor in self.alerts)
        return np.tile(np.array([budget, 0.0, fastest * budget]), (n, 1))

    def direction(self) -> Direction:
        """A burn is always too many bad requests."""
        return "up"

    def explain(self, signal: str, observed: float, detector: BurnRate,
                slot: int) -> str:
        """One sentence naming the alert that fired, its windows and burn rates."""
        slots = np.array([slot])
        burning = []
        for long, short, factor in self.alerts:
            rates = [float(detector.burn(slots, w)[0]) for w in (long, short)]
            if min(rates) >= factor:
                burning.append(f"{rates[0]:.1f}x over {long} min and {rates[1]:.1f}x over "
                               f"{short} min (limit {factor:g}x)")
        return (f"burn_rate: {signal} burns the {100 * self.objective:g}% objective's "
                f"error budget: {'; '.join(burning) or 'no window over its limit'} "
                f"(observed {observed:g})")


Rule = ThresholdRule | BurnRateRule

DEFAULT_RULES: tuple[Rule, ...] = (
    # Weekly full backups may be a week and a day old; the newest backup of any kind
    # (diff or incr age counts a newer full too) must be within a day, the usual RPO.
    ThresholdRule("backup.last_success_age_seconds", 8 * 86_400.0, min_duration=600.0,
                  unit=" s", labels={"backup_type": "full"}),
    ThresholdRule("backup.last_success_age_seconds", 86_400.0, min_duration=600.0,
                  unit=" s"),
    # The standby's own lag, and each replica's lag as the primary sees it.
    ThresholdRule("postgres.replication_lag_seconds", 300.0, min_duration=300.0, unit=" s"),
    ThresholdRule("postgres.replica_lag_seconds", 300.0, min_duration=300.0, unit=" s"),
    # Broken replication shows as a standby not streaming or a replica gone from the
    # primary, before any lag can be measured.
    ThresholdRule("postgres.wal_receiver_streaming", 0.5, above=False, min_duration=300.0),
    ThresholdRule("postgres.replica_connected", 0.5, above=False, min_duration=300.0),
    # Renewal normally happens 30 days ahead; clear once renewed past three weeks.
    ThresholdRule("traefik.tls_cert_expiry_days", 14.0, clear=21.0, above=False, unit=" d"),
    BurnRateRule("traefik.server_error_ratio", objective=0.999),
    BurnRateRule("traefik.service_server_error_ratio", objective=0.999),
    # Latency SLO: 99 % of requests faster than the traefik collector's latency objective
    # (the bucket bound in the le label). Appended last: a snapshot keys rules by index.
    BurnRateRule("traefik.slow_request_ratio", objective=0.99),
    BurnRateRule("traefik.service_slow_request_ratio", objective=0.99),
)


def rule_for(signal: str, labels: Mapping[str, str], rules: tuple[Rule, ...]
             ) -> int | None:
    """Index of the first rule judging a series, or None when no rule does."""
    for index, rule in enumerate(rules):
        if fnmatchcase(signal, rule.pattern) and all(
                fnmatchcase(labels.get(key, ""), want) for key, want in rule.labels.items()):
            return index
    return None
