"""The backup collector against real pgBackRest stanzas on a real archiving primary."""

from __future__ import annotations

import json
import time

import pytest

from collectors.backup import BackupCollector, parse_pgbackrest_info
from collectors.base import TargetState, scrape
from tests.readings import value
from tests.services._support import wait_until
from tests.services.pgbackrest import BackRestRepo

pytestmark = pytest.mark.integration

CHECKED_SIGNALS = {
    "backup.up",
    "backup.scrape_duration_seconds",
    "backup.stanza_status",
    "backup.last_success_age_seconds",
    "backup.stale",
    "backup.running",
    "backup.error",
    "backup.wal_archive_segment",
    "backup.wal_archive_stalled_seconds",
}

# The stale stanza's RPO is short and main's long, so that reading "ten minutes later"
# finds one stanza stale and the other not, whatever the set-up took.
RPO = {"rpo_seconds": 3600.0, "stanza_rpo_seconds": {"stale": 300.0}}


def collector(repo: BackRestRepo, **options) -> BackupCollector:
    return BackupCollector(labels={"instance": "archiving"}, command=repo.command, **options)


def test_failed_run_never_enters_the_backup_list(pgbackrest_repo: BackRestRepo) -> None:
    info = pgbackrest_repo.must(f"--stanza={pgbackrest_repo.stale}", "--output=json", "info")
    (stale,) = parse_pgbackrest_info(info)

    assert pgbackrest_repo.failed_exit_code != 0
    assert [backup.kind for backup in stale.backups] == ["full"]


def test_fresh_stanza_and_stale_stanza(pgbackrest_repo: BackRestRepo) -> None:
    target, state = collector(pgbackrest_repo, **RPO), TargetState()
    now = time.time()
    batch = scrape(target, state, now)

    assert value(batch, "backup.up") == 1.0
    assert 0.0 < value(batch, "backup.scrape_duration_seconds") < 30.0
    for stanza in (pgbackrest_repo.fresh, pgbackrest_repo.stale):
        assert value(batch, "backup.stanza_status", stanza=stanza) == 0.0
        assert value(batch, "backup.running", stanza=stanza) == 0.0
        assert value(batch, "backup.error", stanza=stanza) == 0.0
        assert value(batch, "backup.stale", stanza=stanza) == 0.0

    ages = {
        kind: value(batch, "backup.last_success_age_seconds", stanza="main", backup_type=kind)
        for kind in ("full", "diff", "incr")
    }
    assert ages["full"] >= ages["diff"] >= ages["incr"] >= 0.0
    stale_full = value(
        batch, "backup.last_success_age_seconds", stanza="stale", backup_type="full"
    )
    assert stale_full >= ages["full"]

    # Ten minutes on, with no new backup: only the stanza with the short RPO is stale.
    later = scrape(target, state, now + 600)
    assert value(later, "backup.stale", stanza="stale") == 1.0
    assert value(later, "backup.stale", stanza="main") == 0.0


def test_wal_archive_progress(pgbackrest_repo: BackRestRepo) -> None:
    target, state = collector(pgbackrest_repo, stanza=pgbackrest_repo.fresh), TargetState()
    now = time.time()
    first = scrape(target, state, now)
    segment = value(first, "backup.wal_archive_segment", stanza="main")

    node = pgbackrest_repo.node
    node.sql("CREATE TABLE IF NOT EXISTS wal_mark (at timestamptz)")
    node.sql("INSERT INTO wal_mark VALUES (now())")
    switched = node.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    wait_until(lambda: _archived(pgbackrest_repo) >= switched, f"{switched} archived")

    moved = scrape(target, state, now + 5)
    assert value(moved, "backup.wal_archive_segment", stanza="main") > segment
    assert value(moved, "backup.wal_archive_stalled_seconds", stanza="main") == 0.0

    idle = scrape(target, state, now + 35)
    assert value(idle, "backup.wal_archive_stalled_seconds", stanza="main") == 30.0


def test_unreadable_repository_is_permission_denied(pgbackrest_repo: BackRestRepo) -> None:
    # `nobody` may read the config but not the postgres-owned repository.
    command = ("runuser", "-u", "nobody", "--", *pgbackrest_repo.command[4:])
    target = BackupCollector(labels={}, command=command)
    state = TargetState()

    assert value(scrape(target, state), "backup.up") == 0.0
    assert state.error_code == "permission_denied"


def _archived(repo: BackRestRepo) -> str:
    info = json.loads(repo.must(f"--stanza={repo.fresh}", "--output=json", "info"))
    return info[0]["archive"][0]["max"] or ""
