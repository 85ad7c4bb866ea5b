"""Incident scenarios as TOML files: what to break in the simulated estate, and when, and
what a good pipeline should make of it (the ground truth).

A scenario file (format in docs/simulator.md)::

    name = "replica-lag-spike"
    description = "A long report on the read replica holds back WAL replay."

    [ground_truth]
    start = "tue 14:00"          # day of the simulated week and UTC time
    end = "tue 14:45"
    service = "postgres"         # root cause, as the service label names it
    component = "pg-replica-1"
    signals = ["postgres.replica_lag_seconds"]
    affected_kpis = ["kpi.stock_sync_delay_seconds"]
    expected_tier = "page"

    [[effects]]
    target = "postgres.replica_lag_seconds"
    labels = { replica = "pg-replica-1" }
    op = "ramp"
    value = 600.0

    [[calendar]]                 # optional: what a user would have put in the calendar
    name = "flash sale"          # (a promotion, a holiday), as tillwatch.toml's
    labels = { sales_channel = "website" }   # [detectors] events; window as effects

Effects and calendar entries default to the ground-truth window; give ``start``/``end`` to
move one. Loading validates everything against the estate, so a typo fails with the file,
the key and the fix rather than a silent no-op. :func:`calendar_events` turns the
calendar entries into the detector settings a user would have written.
"""

from __future__ import annotations

import re
import time
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from estate.scoring import ExpectedIncident
from estate.simulator import DAY, Effect, Estate, Simulator, layout, targets
from tillwatch.config import CalendarEventSettings
from tillwatch.errors import ConfigError

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_OFFSET = re.compile(r"^(mon|tue|wed|thu|fri|sat|sun)\s+([0-9]{1,2}):([0-9]{2})$")
_OFFSET_FIX = "write a day and a UTC time such as 'tue 14:00' ('sun 24:00' ends the week)"


class ScenarioError(ConfigError):
    """A scenario file is invalid; the message names the file, the key and the fix."""

    code = "scenario_invalid"


def week_offset(text: str) -> float:
    """Seconds from Monday 00:00 to a ``"<day> HH:MM"`` moment of the simulated week.

    Raises:
        ValueError: when the text is not of that form.
    """
    match = _OFFSET.match(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a week moment; {_OFFSET_FIX}")

    day, hours, minutes = _DAYS.index(match[1]), int(match[2]), int(match[3])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise ValueError(f"{text!r} is not a time of day; {_OFFSET_FIX}")
    return day * DAY + hours * 3600 + minutes * 60


def _moment(value: str) -> str:
    week_offset(value)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Windowed(_Strict):
    """A part of a scenario with its own window; by default the incident's."""

    start: str | None = Field(default=None, description="defaults to the incident start")
    end: str | None = Field(default=None, description="defaults to the incident end")

    @field_validator("start", "end")
    @classmethod
    def _valid_moment(cls, value: str | None) -> str | None:
        return value if value is None else _moment(value)


class EffectSpec(_Windowed):
    """One effect: which signal or driver changes, for which series, how and when."""

    target: str = Field(description="an emitted signal or a driver.* name")
    op: Literal["multiply", "add", "set", "ramp"]
    value: float
    labels: dict[str, str] = Field(default_factory=dict, description="series to touch")


class CalendarSpec(_Windowed):
    """A calendar event the estate's owner planned and would have configured: KPIs of
    the series carrying ``labels`` are not judged during it."""

    name: str = Field(min_length=1, description="what it is, e.g. 'flash sale'")
    labels: dict[str, str] = Field(default_factory=dict, description="{} = every KPI")


class GroundTruth(_Strict):
    """What a good pipeline should make of the scenario."""

    start: str
    end: str
    service: str = Field(description="root-cause service, as its service label names it")
    component: str = Field(default="", description="the instance, replica or channel at fault")
    also_services: list[str] = Field(default_factory=list)
    signals: list[str] = Field(min_length=1, description="signals where the cause shows")
    affected_kpis: list[str] = Field(default_factory=list)
    expected_tier: Literal["page", "ticket", "info", "none"]

    @field_validator("start", "end")
    @classmethod
    def _valid_moment(cls, value: str) -> str:
        return _moment(value)


class ScenarioSpec(_Strict):
    """A whole scenario file."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str
    ground_truth: GroundTruth
    effects: list[EffectSpec] = Field(min_length=1)
    calendar: list[CalendarSpec] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A loaded, validated scenario."""

    path: Path
    spec: ScenarioSpec

    @property
    def name(self) -> str:
        return self.spec.name

    def effects(self, epoch: float) -> list[Effect]:
        """The scenario's effects in simulated time starting at ``epoch``."""
        truth = self.spec.ground_truth
        return [
            Effect(
                target=effect.target,
                op=effect.op,
                value=effect.value,
                start=epoch + week_offset(effect.start or truth.start),
                end=epoch + week_offset(effect.end or truth.end),
                labels=dict(effect.labels),
            )
            for effect in self.spec.effects
        ]

    def calendar(self, epoch: float) -> list[CalendarEventSettings]:
        """The scenario's calendar entries as ``[detectors] events`` settings, in
        simulated time starting at ``epoch``."""
        truth = self.spec.ground_truth
        return [
            CalendarEventSettings(
                name=entry.name,
                start=_iso(epoch + week_offset(entry.start or truth.start)),
                end=_iso(epoch + week_offset(entry.end or truth.end)),
                labels=dict(entry.labels),
            )
            for entry in self.spec.calendar
        ]

    def incident(self, epoch: float) -> ExpectedIncident:
        """The ground truth in simulated time starting at ``epoch``, for scoring."""
        truth = self.spec.ground_truth
        return ExpectedIncident(
            name=self.name,
            start=epoch + week_offset(truth.start),
            end=epoch + week_offset(truth.end),
            service=truth.service,
            expected_tier=truth.expected_tier,
            also_services=tuple(truth.also_services),
            affected_kpis=tuple(truth.affected_kpis),
        )


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(ts))


def load_scenario(path: Path | str, estate: Estate | None = None) -> Scenario:
    """Read and validate one scenario file against the estate it will run in.

    Raises:
        ScenarioError: naming the file, the key and the fix.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ScenarioError(f"{path}: cannot read scenario: {error}; fix the file") from error

    try:
        spec = ScenarioSpec.model_validate(raw)
    except ValidationError as error:
        raise ScenarioError(_describe(path, error)) from error
    _check_against_estate(path, spec, estate or Estate())
    return Scenario(path=path, spec=spec)


def _describe(path: Path, error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        problems.append(f"{path}: {key}: {item['msg']}{_hint(item)}")
    return "\n".join(problems)


def _hint(item: Any) -> str:
    kind = item["type"]
    if kind == "extra_forbidden":
        return "; remove it or check its spelling against docs/simulator.md"
    if kind == "missing":
        return "; add it (see docs/simulator.md)"
    if kind == "literal_error":
        return "; use one of the values listed"
    return ""


def _check_against_estate(path: Path, spec: ScenarioSpec, estate: Estate) -> None:
    truth = spec.ground_truth
    if week_offset(truth.end) <= week_offset(truth.start):
        raise ScenarioError(
            f"{path}: ground_truth.end {truth.end!r} is not after start {truth.start!r}; "
            "end the incident later in the week"
        )
    known = targets(estate)
    emitted = layout(estate)
    for signal in truth.signals:
        if signal not in emitted:
            raise ScenarioError(
                f"{path}: ground_truth.signals: {signal!r} is not a signal the estate "
                f"emits; use one of {sorted(emitted)}"
            )
    kpis = sorted(s for s in emitted if s.startswith("kpi."))
    for kpi in truth.affected_kpis:
        if kpi not in kpis:
            raise ScenarioError(
                f"{path}: ground_truth.affected_kpis: {kpi!r} is not a KPI the estate "
                f"emits; use one of {kpis}"
            )
    for n, effect in enumerate(spec.effects):
        _check_effect(path, f"effects[{n}]", effect, known, spec)
    for n, entry in enumerate(spec.calendar):
        _check_calendar(path, f"calendar[{n}]", entry, emitted, spec)


def _check_effect(
    path: Path,
    key: str,
    effect: EffectSpec,
    known: dict[str, list[dict[str, str]]],
    spec: ScenarioSpec,
) -> None:
    series = known.get(effect.target)
    if series is None:
        raise ScenarioError(
            f"{path}: {key}.target: {effect.target!r} is neither a signal nor a driver of "
            f"the estate; use one of {sorted(known)}"
        )
    if not any(all(s.get(k) == v for k, v in effect.labels.items()) for s in series):
        raise ScenarioError(
            f"{path}: {key}.labels: no {effect.target} series has labels "
            f"{effect.labels}; its series have {series}"
        )
    _check_window(path, key, effect, spec)


def _check_calendar(
    path: Path,
    key: str,
    entry: CalendarSpec,
    emitted: dict[str, list[dict[str, str]]],
    spec: ScenarioSpec,
) -> None:
    kpis = [
        labels
        for signal, series in emitted.items()
        if signal.startswith("kpi.")
        for labels in series
    ]
    if not any(all(s.get(k) == v for k, v in entry.labels.items()) for s in kpis):
        raise ScenarioError(
            f"{path}: {key}.labels: no KPI series has labels {entry.labels}; the "
            f"calendar masks KPIs only, and theirs are {kpis}"
        )
    _check_window(path, key, entry, spec)


def _check_window(path: Path, key: str, part: _Windowed, spec: ScenarioSpec) -> None:
    start = week_offset(part.start or spec.ground_truth.start)
    if week_offset(part.end or spec.ground_truth.end) <= start:
        raise ScenarioError(f"{path}: {key}.end is not after its start; end it later")


def builtin_paths() -> list[Path]:
    """The scenario files shipped with tillwatch, sorted by name."""
    folder = resources.files("estate") / "scenarios"
    return sorted(
        Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".toml")
    )


def load_scenarios(
    paths: Iterable[Path | str] | None = None, estate: Estate | None = None
) -> list[Scenario]:
    """Load scenario files (the built-in ones by default); a folder loads its *.toml.

    Raises:
        ScenarioError: for the first invalid file, or when two share a name.
    """
    files: list[Path] = []
    for path in builtin_paths() if paths is None else [Path(p) for p in paths]:
        files.extend(sorted(path.glob("*.toml")) if path.is_dir() else [path])

    scenarios = [load_scenario(path, estate) for path in files]
    seen: dict[str, Path] = {}
    for scenario in scenarios:
        if scenario.name in seen:
            raise ScenarioError(
                f"{scenario.path}: name {scenario.name!r} is already used by "
                f"{seen[scenario.name]}; give each scenario its own name"
            )
        seen[scenario.name] = scenario.path
    return scenarios


def simulate(
    scenarios: Sequence[Scenario], estate: Estate | None = None, seed: int = 0
) -> tuple[Simulator, list[ExpectedIncident]]:
    """A simulator with every scenario's effects applied, and the ground truth to score.

    Raises:
        SimulatorError: when an effect does not fit the estate (checked at load too).
    """
    estate = estate or Estate()
    effects = [effect for s in scenarios for effect in s.effects(estate.epoch)]
    truth = [s.incident(estate.epoch) for s in scenarios]
    return Simulator(estate, seed=seed, effects=effects), truth


def calendar_events(
    scenarios: Sequence[Scenario], estate: Estate | None = None
) -> list[CalendarEventSettings]:
    """Every scenario's calendar entries, as the ``[detectors] events`` a user would have
    configured for the simulated week (the demo passes them like the trading hours)."""
    epoch = (estate or Estate()).epoch
    return [event for scenario in scenarios for event in scenario.calendar(epoch)]
