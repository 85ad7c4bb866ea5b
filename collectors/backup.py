"""Backups: is there a fresh, complete backup and is WAL still being archived?

Reads ``pgbackrest --output=json info`` or ``wal-g backup-list --json --detail`` (one
subprocess per scrape, with a timeout) and reports per stanza (label ``stanza``): the
stanza status, the age of the last backup of each type, the last backup's duration and
sizes, its error flag, WAL archive progress, and ``backup.stale`` against the RPO.

Neither tool lists a failed run: a backup enters pgBackRest's backup.info, and WAL-G's
list, only when it completes. A failing backup job therefore shows up here as a stanza
status other than 0, an error flag, or an age that keeps growing until ``backup.stale``
turns 1 (REFERENCE.md section 5); the job's own exit code is the scheduler's business.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from collectors.base import Collector, Reading, SignalSpec
from tillwatch.errors import ConfigError, SourceError

log = logging.getLogger(__name__)

# A backup of a type also counts for the types that could have been taken instead, newest
# wins: a new full resets the diff and incr ages (as pgbackrest_exporter does).
COVERS = {
    "full": ("full",),
    "diff": ("full", "diff"),
    "incr": ("full", "diff", "incr"),
    "delta": ("full", "delta"),
}

# initdb's default; a server initialised with --wal-segsize needs the collector option.
DEFAULT_WAL_SEGMENT_BYTES = 16 * 1024 * 1024

COMMANDS = {
    "pgbackrest": ("pgbackrest",),
    "walg": ("wal-g",),
}

ARGUMENTS = {
    "pgbackrest": ("--output=json", "info"),
    "walg": ("backup-list", "--json", "--detail"),
}

# Text in the tool's stderr -> scrape error code; anything else is a bad response.
STDERR_CODES = (
    ("permission denied", "permission_denied"),
    ("access denied", "permission_denied"),
    ("timed out", "timeout"),
    ("timeout", "timeout"),
    ("unable to connect", "refused"),
    ("connection refused", "refused"),
)


@dataclass(frozen=True, slots=True)
class BackupRecord:
    """One completed backup, as either tool lists it."""

    kind: str
    start: float
    stop: float
    database_bytes: float | None = None
    repository_bytes: float | None = None
    error: bool | None = None


@dataclass(frozen=True, slots=True)
class StanzaReport:
    """What one tool says about one stanza (pgBackRest) or one storage (WAL-G)."""

    name: str
    backups: tuple[BackupRecord, ...]
    kinds: tuple[str, ...]
    status_code: int | None = None
    wal_max: str | None = None
    running: bool | None = None
    unreadable: tuple[str, ...] = ()

    def last(self) -> BackupRecord | None:
        """The most recently completed backup, of any type."""
        return max(self.backups, key=lambda backup: backup.stop, default=None)


class BackupCollector(Collector):
    """Reads the backup catalogue of pgBackRest or WAL-G.

    Args:
        labels: the target's labels; ``service`` defaults to ``backup``.
        tool: ``pgbackrest`` or ``walg``.
        command: argv prefix that runs the tool, e.g. ``("sudo", "-u", "postgres",
            "pgbackrest", "--config=/etc/pgbackrest.conf")``; defaults to the bare tool.
        stanza: pgBackRest: read only this stanza; WAL-G: the ``stanza`` label to report
            under (default ``walg``).
        rpo_seconds: a stanza whose newest backup is older than this is stale.
        stanza_rpo_seconds: per-stanza overrides of ``rpo_seconds``.
        timeout: seconds the tool may run before the scrape fails with ``timeout``.
        wal_segment_bytes: the servers' WAL segment size, to number archived segments.

    Raises:
        ConfigError: for an unknown tool or a non-positive RPO.
    """

    source = "backup"
    signals = (
        SignalSpec("backup.stanza_status", "1",
                   "pgBackRest stanza status code: 0 ok, 1 missing stanza path, 2 no valid "
                   "backups, 3 missing stanza data, 4 differs across repos, 5 database "
                   "mismatch, 99 other", "pgbackrest_stanza_status"),
        SignalSpec("backup.last_success_age_seconds", "s",
                   "seconds since the last completed backup of type backup_type, a newer "
                   "full (or diff) counting for diff and incr",
                   "pgbackrest_backup_since_last_completion_seconds"),
        SignalSpec("backup.last_duration_seconds", "s", "duration of the newest backup",
                   "pgbackrest_backup_last_duration_seconds"),
        SignalSpec("backup.database_size_bytes", "By",
                   "database size the newest backup restores", "pgbackrest_backup_size_bytes"),
        SignalSpec("backup.repository_size_bytes", "By",
                   "repository bytes needed to restore the newest backup",
                   "pgbackrest_backup_repo_size_bytes"),
        SignalSpec("backup.error", "1",
                   "1 if the newest backup found page checksum errors (pgBackRest)",
                   "pgbackrest_backup_last_error_status"),
        SignalSpec("backup.running", "1", "1 while a backup or expire holds the stanza lock"),
        SignalSpec("backup.wal_archive_segment", "1",
                   "newest archived WAL segment, numbered by WAL position"),
        SignalSpec("backup.wal_archive_stalled_seconds", "s",
                   "seconds since the newest archived WAL segment last changed, counted "
                   "from the collector's first scrape"),
        SignalSpec("backup.stale", "1", "1 if the newest backup is older than the RPO"),
    )

    def __init__(
        self,
        *,
        labels: Mapping[str, str],
        tool: Literal["pgbackrest", "walg"] = "pgbackrest",
        command: Sequence[str] | None = None,
        stanza: str | None = None,
        rpo_seconds: float = 86_400.0,
        stanza_rpo_seconds: Mapping[str, float] | None = None,
        timeout: float = 60.0,
        wal_segment_bytes: int = DEFAULT_WAL_SEGMENT_BYTES,
    ) -> None:
        _check_options(tool, rpo_seconds, stanza_rpo_seconds or {})
        super().__init__(labels={"service": "backup", "instance": tool, **labels})
        self.tool = tool
        self.argv = [*(command or COMMANDS[tool]), *_stanza_option(tool, stanza)]
        self.argv += ARGUMENTS[tool]
        self.stanza = stanza
        self.rpo_seconds = rpo_seconds
        self.stanza_rpo_seconds = dict(stanza_rpo_seconds or {})
        self.timeout = timeout
        self.wal_segment_bytes = wal_segment_bytes
        # Per stanza: the newest archived segment seen, and when it was first seen.
        self._wal_seen: dict[str, tuple[int, float]] = {}

    def read(self, now: float) -> Iterator[Reading]:
        """Run the tool once and report every stanza it lists.

        Raises:
            SourceError: when the tool cannot run, times out or prints something else.
        """
        output = self._run()
        try:
            stanzas = self._parse(output)
        except (KeyError, TypeError, ValueError) as garbled:
            raise SourceError(
                "bad_response",
                f"backup collector: {self.tool} output is not the expected JSON ({garbled!r});"
                " check the tool's version against REFERENCE.md section 5",
            ) from garbled

        for report in stanzas:
            if report.unreadable:
                raise SourceError(stderr_code(report.unreadable[0]), self._explain(report))
        for report in stanzas:
            yield from self._stanza(report, now)

    def _parse(self, output: str) -> list[StanzaReport]:
        if self.tool == "walg":
            return [parse_walg_backup_list(output, self.stanza or "walg")]
        return parse_pgbackrest_info(output)

    def _run(self) -> str:
        try:
            done = run_bounded(self.argv, self.timeout)
        except subprocess.TimeoutExpired as slow:
            raise SourceError(
                "timeout",
                f"backup collector: {self.argv[0]} ran over {self.timeout:.0f}s; check the "
                "repository's storage, or raise the timeout",
            ) from slow
        except OSError as missing:
            raise SourceError(
                "refused",
                f"backup collector: cannot run {self.argv[0]}: {missing.strerror}; install "
                f"{self.tool} or fix the collector's command",
            ) from missing
        if done.returncode != 0:
            raise SourceError(stderr_code(done.stderr), self._explain_exit(done))
        return done.stdout

    def _explain(self, report: StanzaReport) -> str:
        return (
            f"backup collector: {self.tool} could not read the repository of stanza "
            f"{report.name}: {report.unreadable[0][:200]}; run the collector as the "
            "repository's owner (e.g. command = ['sudo', '-u', 'postgres', 'pgbackrest'])"
        )

    def _explain_exit(self, done: subprocess.CompletedProcess[str]) -> str:
        lines = done.stderr.strip().splitlines() or ["(no output)"]
        return (
            f"backup collector: {self.tool} exited {done.returncode}: {lines[0][:200]}; "
            "run the same command by hand as the collector's user to see why"
        )

    def _stanza(self, report: StanzaReport, now: float) -> Iterator[Reading]:
        labels = {"stanza": report.name}
        if report.status_code is not None:
            yield Reading("backup.stanza_status", float(report.status_code), labels)
        if report.running is not None:
            yield Reading("backup.running", float(report.running), labels)

        for kind, age in last_completion_ages(report.backups, report.kinds, now).items():
            kind_labels = {**labels, "backup_type": kind}
            yield Reading("backup.last_success_age_seconds", age, kind_labels)
        yield from _newest(report, labels)
        yield Reading("backup.stale", float(self._is_stale(report, now)), labels)
        yield from self._wal_progress(report, labels, now)

    def _is_stale(self, report: StanzaReport, now: float) -> bool:
        # No backup at all is the stalest state there is.
        rpo = self.stanza_rpo_seconds.get(report.name, self.rpo_seconds)
        last = report.last()
        return last is None or now - last.stop > rpo

    def _wal_progress(
        self, report: StanzaReport, labels: Mapping[str, str], now: float
    ) -> Iterator[Reading]:
        if report.wal_max is None:
            return
        segment = wal_segment_number(report.wal_max, self.wal_segment_bytes)
        seen = self._wal_seen.get(report.name)
        if seen is None or segment > seen[0]:
            seen = self._wal_seen[report.name] = (segment, now)

        yield Reading("backup.wal_archive_segment", float(seen[0]), labels)
        yield Reading("backup.wal_archive_stalled_seconds", max(0.0, now - seen[1]), labels)


def _newest(report: StanzaReport, labels: Mapping[str, str]) -> Iterator[Reading]:
    last = report.last()
    if last is None:
        return
    yield Reading("backup.last_duration_seconds", max(0.0, last.stop - last.start), labels)
    if last.database_bytes is not None:
        yield Reading("backup.database_size_bytes", last.database_bytes, labels)
    if last.repository_bytes is not None:
        yield Reading("backup.repository_size_bytes", last.repository_bytes, labels)
    if last.error is not None:
        yield Reading("backup.error", float(last.error), labels)


def last_completion_ages(
    backups: Sequence[BackupRecord], kinds: Sequence[str], now: float
) -> dict[str, float]:
    """Seconds since the last completion of each backup type in ``kinds``.

    A newer backup that covers a type counts for it (see :data:`COVERS`), so with only a
    full backup the diff and incr ages equal the full's; with no backup, nothing.
    """
    ages: dict[str, float] = {}
    for kind in kinds:
        stops = [backup.stop for backup in backups if backup.kind in COVERS[kind]]
        if stops:
            ages[kind] = max(0.0, now - max(stops))
    return ages


def parse_pgbackrest_info(payload: str | bytes) -> list[StanzaReport]:
    """Parse ``pgbackrest --output=json info``: a JSON array of stanzas.

    Raises:
        ValueError: when the payload is not JSON or not an array.
        KeyError, TypeError: when a stanza lacks the documented keys.
    """
    stanzas = json.loads(payload)
    if not isinstance(stanzas, list):
        raise ValueError(f"expected a JSON array of stanzas, found {type(stanzas).__name__}")
    return [_pgbackrest_stanza(stanza) for stanza in stanzas]


def _pgbackrest_stanza(stanza: Mapping[str, Any]) -> StanzaReport:
    status = stanza["status"]
    lock = status.get("lock", {}).get("backup", {})
    archives = [archive["max"] for archive in stanza.get("archive", []) if archive.get("max")]
    return StanzaReport(
        name=stanza["name"],
        backups=tuple(_pgbackrest_backup(backup) for backup in stanza.get("backup", [])),
        kinds=("full", "diff", "incr"),
        status_code=int(status["code"]),
        # Archive ids change with the PostgreSQL version; the newest WAL is the max name.
        wal_max=max(archives, key=wal_segment_number, default=None),
        running=bool(lock["held"]) if "held" in lock else None,
        unreadable=_unreadable_repos(stanza.get("repo", [])),
    )


def _unreadable_repos(repos: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    # info exits 0 when it cannot read a repository: the error is a repo status 99.
    messages = [repo["status"]["message"] for repo in repos if repo["status"]["code"] == 99]
    return tuple(messages) if repos and len(messages) == len(repos) else ()


def _pgbackrest_backup(backup: Mapping[str, Any]) -> BackupRecord:
    info = backup.get("info", {})
    return BackupRecord(
        kind=backup["type"],
        start=float(backup["timestamp"]["start"]),
        stop=float(backup["timestamp"]["stop"]),
        database_bytes=_number(info.get("size")),
        repository_bytes=_number(info.get("repository", {}).get("size")),
        error=backup.get("error"),
    )


def parse_walg_backup_list(payload: str | bytes, name: str) -> StanzaReport:
    """Parse ``wal-g backup-list --json --detail`` into one report named ``name``.

    Raises:
        ValueError: when the payload is not JSON, not an array, or a time does not parse.
        KeyError, TypeError: when a backup lacks the documented keys.
    """
    backups = json.loads(payload)
    if not isinstance(backups, list):
        raise ValueError(f"expected a JSON array of backups, found {type(backups).__name__}")
    listed = tuple(_walg_backup(backup) for backup in backups)
    return StanzaReport(name=name, backups=listed, kinds=("full", "delta"))


def _walg_backup(backup: Mapping[str, Any]) -> BackupRecord:
    # A delta backup's name carries its base: base_<wal>_D_<base wal>.
    kind = "delta" if "_D_" in backup["backup_name"] else "full"
    return BackupRecord(
        kind=kind,
        start=_timestamp(backup["start_time"]),
        stop=_timestamp(backup["finish_time"]),
        database_bytes=_number(backup.get("uncompressed_size")),
        repository_bytes=_number(backup.get("compressed_size")),
    )


def wal_segment_number(name: str, segment_bytes: int = DEFAULT_WAL_SEGMENT_BYTES) -> int:
    """Number a WAL segment by its position in the WAL: start LSN / segment size.

    Timelines do not matter: positions continue across them.

    Raises:
        ValueError: when ``name`` is not a 24-hex-digit WAL segment name.
    """
    if len(name) != 24:
        raise ValueError(f"not a WAL segment name: {name!r}")
    return int(name[8:16], 16) * (2**32 // segment_bytes) + int(name[16:24], 16)


def run_bounded(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command; on timeout kill its whole process group, wrappers' children included.

    Raises:
        subprocess.TimeoutExpired: when the command ran over ``timeout`` seconds.
        OSError: when the command cannot be started.
    """
    # sudo/runuser wrappers fork the tool: killing only the wrapper would leave the tool
    # holding our pipes open, and the scrape would wait for it anyway.
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def stderr_code(stderr: str) -> str:
    """Map a failed run's stderr to one of the stable scrape error codes."""
    text = stderr.lower()
    for fragment, code in STDERR_CODES:
        if fragment in text:
            return code
    return "bad_response"


def _timestamp(text: str) -> float:
    # WAL-G writes RFC 3339 with nanoseconds; fromisoformat keeps microseconds.
    return datetime.fromisoformat(text).timestamp()


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _stanza_option(tool: str, stanza: str | None) -> tuple[str, ...]:
    return (f"--stanza={stanza}",) if tool == "pgbackrest" and stanza else ()


def _check_options(tool: str, rpo_seconds: float, overrides: Mapping[str, float]) -> None:
    if tool not in COMMANDS:
        raise ConfigError(
            f"backup collector: tool {tool!r} is not supported; use 'pgbackrest' or 'walg'"
        )
    bad = {name: rpo for name, rpo in {"*": rpo_seconds, **overrides}.items() if rpo <= 0}
    if bad:
        raise ConfigError(
            f"backup collector: RPO must be a positive number of seconds, found {bad}"
        )
