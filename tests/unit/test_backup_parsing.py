"""Backup collector parsing and derivations, on recorded payloads.

tests/data/pgbackrest/*.json were recorded from pgBackRest 2.45 run by the test fixture
(tests/services/pgbackrest.py): two stanzas with backups, a stanza with none yet, a
stanza that does not exist, and what ``info`` prints when its user cannot read the
repository. WAL-G is not installable here: tests/data/walg/backup-list-detail.json is
written by hand from the documented fields of ``wal-g backup-list --json --detail``
(REFERENCE.md section 5). The collector-level tests run the collector's real subprocess
path, with ``sh`` printing the recorded payload in place of the tool.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from collectors.backup import (
    BackupCollector,
    BackupRecord,
    last_completion_ages,
    parse_pgbackrest_info,
    parse_walg_backup_list,
    stderr_code,
    wal_segment_number,
)
from collectors.base import TargetState, scrape
from tests.readings import value, values
from tillwatch.errors import ConfigError
from tillwatch.sample import SampleBatch

DATA = Path(__file__).parents[1] / "data"
TWO_STANZAS = DATA / "pgbackrest" / "info-two-stanzas.json"
NO_BACKUPS = DATA / "pgbackrest" / "info-no-backups.json"
MISSING = DATA / "pgbackrest" / "info-missing-stanza.json"
UNREADABLE = DATA / "pgbackrest" / "info-repo-unreadable.json"
WALG = DATA / "walg" / "backup-list-detail.json"

CHECKED_SIGNALS = {
    "backup.up",
    "backup.stanza_status",
    "backup.last_success_age_seconds",
    "backup.last_duration_seconds",
    "backup.database_size_bytes",
    "backup.repository_size_bytes",
    "backup.error",
    "backup.running",
    "backup.wal_archive_segment",
    "backup.wal_archive_stalled_seconds",
    "backup.stale",
}


def recorded(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def replaying(path: Path, **options) -> BackupCollector:
    """A collector whose command prints ``path`` (the tool's own arguments are ignored)."""
    command = ("sh", "-c", 'cat "$0"', str(path))
    return BackupCollector(labels={"instance": "test"}, command=command, **options)


def stops(stanza: dict, kind: str) -> list[int]:
    return [b["timestamp"]["stop"] for b in stanza["backup"] if b["type"] == kind]


def test_pgbackrest_info_parses_each_stanza() -> None:
    raw = {stanza["name"]: stanza for stanza in recorded(TWO_STANZAS)}
    reports = {report.name: report for report in parse_pgbackrest_info(TWO_STANZAS.read_text())}

    assert reports.keys() == raw.keys() == {"main", "stale"}
    main = reports["main"]
    assert [b.kind for b in main.backups] == [b["type"] for b in raw["main"]["backup"]]
    assert main.status_code == raw["main"]["status"]["code"] == 0
    assert main.wal_max == raw["main"]["archive"][0]["max"]
    assert main.running is False

    newest, last = raw["main"]["backup"][-1], main.last()
    assert last is not None
    assert last.stop == newest["timestamp"]["stop"]
    assert last.database_bytes == newest["info"]["size"]
    assert last.repository_bytes == newest["info"]["repository"]["size"]
    assert last.error is False


def test_ages_of_diff_and_incr_fall_back_to_newer_full_or_diff() -> None:
    raw = {stanza["name"]: stanza for stanza in recorded(TWO_STANZAS)}
    reports = {report.name: report for report in parse_pgbackrest_info(TWO_STANZAS.read_text())}
    now = max(stops(raw["main"], "incr")) + 600.0

    main = last_completion_ages(reports["main"].backups, reports["main"].kinds, now)
    kinds = ("full", "diff", "incr")
    assert main == {kind: now - max(stops(raw["main"], kind)) for kind in kinds}

    # The stale stanza only has a full: it stands in for diff and incr.
    stale = last_completion_ages(reports["stale"].backups, reports["stale"].kinds, now)
    assert stale == dict.fromkeys(kinds, now - stops(raw["stale"], "full")[0])


def test_a_full_newer_than_the_last_diff_resets_the_diff_age() -> None:
    backups = [
        BackupRecord("full", 100.0, 110.0),
        BackupRecord("diff", 200.0, 210.0),
        BackupRecord("full", 300.0, 330.0),
    ]
    ages = last_completion_ages(backups, ("full", "diff", "incr"), now=1000.0)
    assert ages == {"full": 670.0, "diff": 670.0, "incr": 670.0}


def test_no_backup_means_no_age() -> None:
    assert last_completion_ages([], ("full", "diff", "incr"), now=1000.0) == {}


def test_walg_backup_list_parses_types_times_and_sizes() -> None:
    raw = recorded(WALG)
    report = parse_walg_backup_list(WALG.read_text(), "pos-db")

    assert report.name == "pos-db"
    assert [b.kind for b in report.backups] == ["full", "full", "delta"]
    delta = report.backups[2]
    assert delta.stop == datetime.fromisoformat(raw[2]["finish_time"]).timestamp()
    assert delta.stop - delta.start == pytest.approx(19.5)
    assert delta.database_bytes == raw[2]["uncompressed_size"]
    assert delta.repository_bytes == raw[2]["compressed_size"]

    now = delta.stop + 60.0
    newer_full = report.backups[1].stop
    assert last_completion_ages(report.backups, report.kinds, now) == {
        "full": now - newer_full,
        "delta": 60.0,
    }


def test_wal_segments_are_numbered_by_position_across_logs_and_timelines() -> None:
    last_of_log = wal_segment_number("0000000100000000000000FF")
    assert wal_segment_number("000000010000000100000000") == last_of_log + 1
    assert wal_segment_number("000000020000000100000000") == last_of_log + 1
    last_64mb = wal_segment_number("00000001000000000000003F", 64 * 1024 * 1024)
    assert wal_segment_number("000000010000000100000000", 64 * 1024 * 1024) == last_64mb + 1
    with pytest.raises(ValueError, match="not a WAL segment"):
        wal_segment_number("00000001.history")


def test_collector_reports_fresh_and_stale_stanzas_against_their_rpo() -> None:
    raw = {stanza["name"]: stanza for stanza in recorded(TWO_STANZAS)}
    collector = replaying(TWO_STANZAS, rpo_seconds=3600.0, stanza_rpo_seconds={"stale": 300.0})
    now = max(stops(raw["main"], "incr")) + 600.0
    batch = scrape(collector, TargetState(), now)

    assert value(batch, "backup.up") == 1.0
    assert value(batch, "backup.stanza_status", stanza="main") == 0.0
    assert value(batch, "backup.running", stanza="main") == 0.0
    assert value(batch, "backup.stale", stanza="main") == 0.0
    assert value(batch, "backup.stale", stanza="stale") == 1.0
    incr = value(batch, "backup.last_success_age_seconds", stanza="main", backup_type="incr")
    assert incr == 600.0

    newest = raw["main"]["backup"][-1]
    duration = newest["timestamp"]["stop"] - newest["timestamp"]["start"]
    assert value(batch, "backup.last_duration_seconds", stanza="main") == duration
    assert value(batch, "backup.database_size_bytes", stanza="main") == newest["info"]["size"]
    repository = newest["info"]["repository"]["size"]
    assert value(batch, "backup.repository_size_bytes", stanza="main") == repository
    assert value(batch, "backup.error", stanza="main") == 0.0


def test_checksum_error_in_the_newest_backup_raises_the_error_flag(tmp_path: Path) -> None:
    stanzas = recorded(TWO_STANZAS)
    stanzas[0]["backup"][-1]["error"] = True
    payload = tmp_path / "info.json"
    payload.write_text(json.dumps(stanzas))

    batch = scrape(replaying(payload), TargetState(), 1.9e9)
    assert value(batch, "backup.error", stanza=stanzas[0]["name"]) == 1.0


def test_stanza_without_backups_is_stale_with_its_status(tmp_path: Path) -> None:
    for path, code in ((NO_BACKUPS, 2.0), (MISSING, 1.0)):
        batch = scrape(replaying(path), TargetState(), 1.9e9)
        name = recorded(path)[0]["name"]
        assert value(batch, "backup.stanza_status", stanza=name) == code
        assert value(batch, "backup.stale", stanza=name) == 1.0
        assert values(batch, "backup.last_success_age_seconds") == []
        assert values(batch, "backup.wal_archive_segment") == []


def test_wal_archive_stall_counts_from_the_last_advance(tmp_path: Path) -> None:
    stanzas = recorded(NO_BACKUPS)
    payload = tmp_path / "info.json"
    collector, state = replaying(payload), TargetState()

    def scrape_with_max(segment: str, now: float) -> SampleBatch:
        stanzas[0]["archive"][0]["max"] = segment
        payload.write_text(json.dumps(stanzas))
        return scrape(collector, state, now)

    first = scrape_with_max("000000010000000000000009", 1.9e9)
    assert value(first, "backup.wal_archive_stalled_seconds") == 0.0
    same = scrape_with_max("000000010000000000000009", 1.9e9 + 30)
    assert value(same, "backup.wal_archive_stalled_seconds") == 30.0
    moved = scrape_with_max("00000001000000000000000A", 1.9e9 + 40)
    assert value(moved, "backup.wal_archive_stalled_seconds") == 0.0
    segment = value(first, "backup.wal_archive_segment")
    assert value(moved, "backup.wal_archive_segment") == segment + 1


def test_walg_collector_reports_under_its_configured_name() -> None:
    raw = recorded(WALG)
    collector = replaying(WALG, tool="walg", stanza="pos-db", rpo_seconds=86400.0)
    finished = datetime.fromisoformat(raw[2]["finish_time"]).timestamp()
    batch = scrape(collector, TargetState(), finished + 90_000)

    assert value(batch, "backup.stale", stanza="pos-db") == 1.0
    age = value(batch, "backup.last_success_age_seconds", stanza="pos-db", backup_type="delta")
    assert age == pytest.approx(90_000)
    assert values(batch, "backup.stanza_status") == []
    assert values(batch, "backup.error") == []


def test_failing_tool_runs_become_up_zero_with_a_code(tmp_path: Path) -> None:
    garbled = tmp_path / "garbled.json"
    garbled.write_text("{not json")
    cases: list[tuple[tuple[str, ...], dict[str, Any], str]] = [
        (
            ("sh", "-c", "echo 'ERROR: [041]: Permission denied' >&2; exit 41"),
            {},
            "permission_denied",
        ),
        (("sh", "-c", 'cat "$0"', str(garbled)), {}, "bad_response"),
        # pgBackRest exits 0 when the repo is unreadable, reporting stanza "[invalid]".
        (("sh", "-c", 'cat "$0"', str(UNREADABLE)), {}, "permission_denied"),
        # The shell's child holds the pipes too: the whole process group must go.
        (("sh", "-c", "sleep 5; true"), {"timeout": 0.2}, "timeout"),
        ((str(tmp_path / "no-such-tool"),), {}, "refused"),
    ]
    for command, options, code in cases:
        state = TargetState()
        collector = BackupCollector(labels={}, command=command, **options)
        assert value(scrape(collector, state, 1.9e9), "backup.up") == 0.0
        assert state.error_code == code, command


def test_stderr_codes() -> None:
    assert stderr_code("ERROR: [103]: unable to connect to 'dbname=postgres'") == "refused"
    assert stderr_code("ERROR: [055]: unable to open missing file") == "bad_response"


def test_invalid_options_are_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="not supported"):
        BackupCollector(labels={}, tool="barman")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="positive"):
        BackupCollector(labels={}, stanza_rpo_seconds={"main": 0})
