"""Configuration: one ``tillwatch.toml``, validated once at start by pydantic models.

With no file, the embedded defaults run: the ``memory://`` stream, the embedded ClickHouse
engine in ``./tillwatch-data``, and alerts to Alertmanager when
``TILLWATCH_ALERTMANAGER_URL`` is set, else to a JSON-lines file and the log.

Secrets never live in the file: a secret option is a reference, ``{ env = "NAME" }`` or
``{ file = "/run/secrets/name" }``, resolved when the component starts. Every option is
documented where it is declared; ``tillwatch config show`` prints the effective values.
"""

from __future__ import annotations

import inspect
import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from tillwatch.errors import ConfigError

DEFAULT_DATA_DIR = Path("tillwatch-data")
ALERTMANAGER_ENV = "TILLWATCH_ALERTMANAGER_URL"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(_Model):
    """Where a secret comes from: an environment variable or a file, never the config."""

    env: str | None = Field(default=None, description="environment variable holding it")
    file: Path | None = Field(
        default=None, description="file holding it (trailing newline cut)"
    )

    def resolve(self) -> SecretStr:
        """Read the secret.

        Raises:
            ConfigError: when the variable is unset or the file unreadable.
        """
        if self.env is not None:
            if self.env not in os.environ:
                raise ConfigError(
                    f"secret: environment variable {self.env} is not set; export it"
                )
            return SecretStr(os.environ[self.env])
        if self.file is None:
            raise ConfigError('secret: give either env = "NAME" or file = "/path"')
        try:
            return SecretStr(self.file.read_text(encoding="utf-8").rstrip("\n"))
        except OSError as error:
            raise ConfigError(f"secret: cannot read {self.file}: {error.strerror}") from error


class StreamSettings(_Model):
    """The stream between stages."""

    url: str = Field(
        default="memory://",
        description="memory:// (in-process) or kafka://host:port[,host:port]",
    )
    partitions: int = Field(default=4, ge=1, le=1024, description="partitions per topic")
    buffer_records: int = Field(
        default=10_000, ge=10, description="records held while the broker is away"
    )
    publish_timeout_seconds: float = Field(
        default=30.0, gt=0, description="how long publish blocks on a full buffer"
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        scheme = urlsplit(url).scheme
        if scheme not in ("memory", "kafka"):
            raise ValueError(
                f"scheme {scheme!r} is unknown; use memory:// or kafka://host:9092"
            )
        if scheme == "kafka" and not urlsplit(url).netloc:
            raise ValueError("kafka:// needs at least one host:port, e.g. kafka://broker:9092")
        return url


class StorageSettings(_Model):
    """ClickHouse: the embedded engine or a server, with the same DDL and SQL."""

    url: str = Field(
        default=f"chdb://{DEFAULT_DATA_DIR}/clickhouse",
        description="chdb://PATH (embedded engine) or http(s)://host:8123 (a server)",
    )
    database: str = Field(default="tillwatch", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    username: str = Field(default="default", description="server user; unused when embedded")
    password: SecretRef | None = Field(default=None, description="server password reference")
    ttl_days: int = Field(default=30, ge=1, description="days a sample is kept")
    batch_rows: int = Field(default=200_000, ge=1, description="rows per insert, at most")
    flush_seconds: float = Field(default=2.0, gt=0, description="longest wait before an insert")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        scheme = urlsplit(url).scheme
        if scheme not in ("chdb", "http", "https"):
            raise ValueError(
                f"scheme {scheme!r} is unknown; use chdb://PATH or http://host:8123"
            )
        return url


class AlertSettings(_Model):
    """Where tiered alerts go."""

    alertmanager_url: str | None = Field(
        default=None,
        description=f"Alertmanager base URL; default from ${ALERTMANAGER_ENV}, else none",
    )
    jsonl_path: Path = Field(
        default=DEFAULT_DATA_DIR / "alerts.jsonl", description="every alert event, always"
    )
    runbook_base_url: str = Field(default="https://runbooks.example.invalid/tillwatch")
    dashboard_base_url: str = Field(default="http://localhost:3000/d/tillwatch")

    def effective_alertmanager_url(self) -> str | None:
        """The configured URL, else the environment's, else none."""
        return self.alertmanager_url or os.environ.get(ALERTMANAGER_ENV) or None


class TelemetrySettings(_Model):
    """tillwatch's own metrics, traces and logs."""

    metrics_address: str | None = Field(
        default="127.0.0.1:9464", description="host:port for /metrics; empty to disable"
    )
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    tracing: Literal["off", "console", "otlp"] = Field(
        default="off", description="OpenTelemetry spans around each stage's batch"
    )
    otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP traces endpoint, e.g. http://collector:4318"
    )


class TradingHoursSettings(_Model):
    """Opening hours of the stores whose KPI series carry ``labels``."""

    labels: dict[str, str] = Field(description='e.g. { store = "brussels" }')
    week: list[list[float]] = Field(
        description="7 entries Monday..Sunday: [open, close] in local hours, [] when closed",
        min_length=7,
        max_length=7,
    )

    @field_validator("week")
    @classmethod
    def _open_close(cls, week: list[list[float]]) -> list[list[float]]:
        for day in week:
            if day and (len(day) != 2 or not 0 <= day[0] < day[1] <= 24):
                raise ValueError(f"{day} is not [open, close] with 0 <= open < close <= 24")
        return week


class CalendarEventSettings(_Model):
    """An expected departure from the usual (holiday, promotion): KPIs are not judged."""

    name: str
    start: str = Field(description="ISO-8601 time, UTC when naive")
    end: str = Field(description="ISO-8601 time, UTC when naive")
    labels: dict[str, str] = Field(default_factory=dict, description="empty: every KPI")


class ThresholdRuleSettings(_Model):
    """A known limit: anomalous once beyond ``limit`` for ``min_duration_seconds``."""

    signal: str = Field(description="signal name or fnmatch pattern, e.g. backup.*_seconds")
    limit: float
    clear: float | None = Field(default=None, description="hysteresis edge; default: limit")
    min_duration_seconds: float = Field(default=0.0, ge=0)
    above: bool = Field(default=True, description="false when values below the limit are bad")
    unit: str = Field(default="", description="for explanations, e.g. ' s'")
    labels: dict[str, str] = Field(default_factory=dict, description="fnmatch per label")


class BurnRateSettings(_Model):
    """An SLO on a bad-ratio signal, judged by multi-window burn rates (1h/5m, 6h/30m)."""

    signal: str = Field(description="a ratio of bad requests, e.g. traefik.server_error_ratio")
    objective: float = Field(default=0.999, gt=0, lt=1, description="e.g. 0.999 = 99.9%")
    labels: dict[str, str] = Field(default_factory=dict, description="fnmatch per label")


class DetectorSettings(_Model):
    """How anomalies are judged."""

    threshold: float = Field(default=0.5, gt=0, lt=1, description="score that is an anomaly")
    utc_offset_hours: float = Field(default=0.0, ge=-12, le=14, description="local time - UTC")
    trading_hours: list[TradingHoursSettings] = Field(default_factory=list)
    events: list[CalendarEventSettings] = Field(default_factory=list)
    rules: list[ThresholdRuleSettings] = Field(
        default_factory=list, description="judged before the built-in rules (first match wins)"
    )
    burn_rates: list[BurnRateSettings] = Field(default_factory=list)
    builtin_rules: bool = Field(default=True, description="keep the built-in rule table")


class CollectorSettings(_Model):
    """One target of one source; ``options`` go to the collector's constructor."""

    source: str = Field(description="collector name: postgres, redis, traefik, queue, ...")
    interval_seconds: float = Field(default=15.0, gt=0)
    timeout_seconds: float = Field(default=10.0, gt=0)
    labels: dict[str, str] = Field(
        default_factory=dict, description="service, instance, company, store ..."
    )
    password: SecretRef | None = Field(default=None, description="credential reference")
    options: dict[str, Any] = Field(default_factory=dict)


class Settings(_Model):
    """The whole configuration."""

    data_dir: Path = Field(default=DEFAULT_DATA_DIR, description="where embedded data lives")
    stream: StreamSettings = StreamSettings()
    storage: StorageSettings = StorageSettings()
    detectors: DetectorSettings = DetectorSettings()
    alerts: AlertSettings = AlertSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    collectors: list[CollectorSettings] = Field(default_factory=list)


def load(path: Path | None) -> Settings:
    """Read and validate a configuration file; ``None`` gives the embedded defaults.

    Raises:
        ConfigError: listing every invalid key with its problem and fix.
    """
    if path is None:
        return Settings()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from error

    try:
        settings = Settings.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(path, error)) from None
    problems = _check_collectors(settings)
    if problems:
        raise ConfigError(f"{path}: {len(problems)} error(s)\n" + "\n".join(problems))
    return settings


def _describe(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: {error.error_count()} error(s)"]
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        lines.append(f"  {key}: {_fix_for(problem)}")
    return "\n".join(lines)


def _fix_for(problem: Any) -> str:
    kind, message = problem["type"], problem["msg"]
    if kind == "extra_forbidden":
        return "unknown key; remove it or check its spelling (see tillwatch.example.toml)"
    if kind == "missing":
        return "required; add it"
    return f"{message} (got {problem.get('input')!r})"


def _check_collectors(settings: Settings) -> list[str]:
    # Imported here: the registry pulls in every collector's driver, which config
    # validation of a stream-only role should not pay for.
    if not settings.collectors:
        return []
    from collectors.registry import COLLECTORS

    problems = []
    for index, target in enumerate(settings.collectors):
        key = f"  collectors.{index}"
        if target.source not in COLLECTORS:
            known = ", ".join(sorted(COLLECTORS))
            problems.append(
                f"{key}.source: unknown collector {target.source!r}; use one of {known}"
            )
            continue
        collector = COLLECTORS[target.source]
        accepted = _constructor_options(collector)
        found = _check_options(target, accepted) + _option_values(collector, target.options)
        problems += [f"{key}.{problem}" for problem in found]
    return problems


def _option_values(collector: type, options: dict[str, Any]) -> list[str]:
    """What a collector finds wrong with its option values, if it checks them.

    A collector that can tell a bad value without reaching its target offers a static
    ``check_options(options) -> ["options.<key>: problem; fix", ...]``, so ``config
    check`` reports the value before ``run`` would fail on it.
    """
    check = getattr(collector, "check_options", None)
    return list(check(options)) if check is not None else []


def _constructor_options(collector: type) -> dict[str, bool]:
    """Keyword options a collector accepts, mapped to whether each is required."""
    parameters = inspect.signature(collector).parameters.values()
    return {
        p.name: p.default is inspect.Parameter.empty
        for p in parameters
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "labels"
    }


def _check_options(target: CollectorSettings, accepted: dict[str, bool]) -> list[str]:
    given = set(target.options) | ({"password"} if target.password else set())
    allowed = ", ".join(sorted(accepted)) or "none"
    problems = [
        f"options.{name}: {target.source} has no such option; it accepts {allowed}"
        for name in sorted(given - set(accepted))
    ]
    problems += [
        f"options.{name}: required by the {target.source} collector; add it"
        for name, required in sorted(accepted.items())
        if required and name not in given
    ]
    return problems


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, secrets shown as references only."""
    data = settings.model_dump(mode="json")
    data["alerts"]["alertmanager_url"] = settings.alerts.effective_alertmanager_url()
    data["storage"]["url"] = _strip_credentials(settings.storage.url)
    return data


def _strip_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=f"***@{netloc}").geturl()
