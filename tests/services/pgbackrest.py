"""pgBackRest with two stanzas on a dedicated archiving primary, set up once per session.

Fixture ``pgbackrest_repo`` (session) -> :class:`BackRestRepo`:

``.node``
    the archiving PostgreSQL 15 primary (a :class:`~tests.services.postgres.PgNode`).
``.config``
    the pgbackrest.conf in the temp dir, passed to every command with ``--config``.
``.command``
    the argv prefix that runs pgbackrest as the ``postgres`` OS user with that config;
    give it to the backup collector as ``command``.
``.run(*args)``
    runs one pgbackrest command, returning the finished process (never raising).
``.fresh`` = ``"main"``
    a stanza with a full, a diff and an incr backup, taken in that order.
``.stale`` = ``"stale"``
    a stanza with one full backup taken before all of ``main``'s, followed by a backup
    attempt that failed (``pgbackrest stop`` was in force): its backups stopped.
``.failed_exit_code``
    the exit code of that failed attempt (non-zero).

Both stanzas archive the same cluster: ``archive_command`` pushes each WAL segment to
both. A dedicated primary keeps the shared replication pair free of ``archive_mode``
(which needs a restart) and of archiving load.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.services._support import require_binary

if TYPE_CHECKING:
    from tests.services.postgres import PgNode

# tests.services.postgres is imported inside functions: importing it here, before pytest
# registers it as a plugin (plugins load in name order), would defeat assert rewriting.
OS_USER = "postgres"

PGBACKREST_INSTALL = "apt-get install pgbackrest, or run scripts/install-system-deps.sh"
FRESH, STALE = "main", "stale"
STANZAS = (FRESH, STALE)


@dataclass
class BackRestRepo:
    """A pgBackRest repository in a temp dir and the primary it backs up."""

    node: PgNode
    config: Path
    workdir: Path
    binary: str
    fresh: str = FRESH
    stale: str = STALE
    failed_exit_code: int = 0

    @property
    def command(self) -> tuple[str, ...]:
        """The argv prefix running pgbackrest as ``postgres`` with this repo's config."""
        return ("runuser", "-u", OS_USER, "--", self.binary, f"--config={self.config}")

    def run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run one pgbackrest command; the caller checks the exit code."""
        return subprocess.run(
            [*self.command, *args],
            cwd=self.workdir, capture_output=True, text=True, timeout=timeout, check=False,
        )

    def must(self, *args: str) -> str:
        """Run one pgbackrest command; fail the test with its output unless it succeeds."""
        done = self.run(*args)
        if done.returncode != 0:
            command = " ".join(args)
            pytest.fail(f"pgbackrest {command} failed ({done.returncode}): {done.stderr}")
        return done.stdout


def write_config(workdir: Path, node: PgNode) -> Path:
    """Write a pgbackrest.conf with a repo, locks and spool all inside ``workdir``."""
    stanza = f"pg1-path={node.data_dir}\npg1-port={node.port}\npg1-socket-path={workdir}\n"
    config = workdir / "pgbackrest.conf"
    config.write_text(
        "[global]\n"
        f"repo1-path={workdir / 'repo'}\n"
        f"lock-path={workdir / 'lock'}\n"
        f"spool-path={workdir / 'spool'}\n"
        f"log-path={workdir / 'log'}\n"
        "log-level-console=warn\n"
        "log-level-file=off\n"
        "compress-type=lz4\n"
        "start-fast=y\n"
        "archive-timeout=30\n"
        f"\n[{FRESH}]\n{stanza}\n[{STALE}]\n{stanza}"
    )
    shutil.chown(config, OS_USER, OS_USER)
    return config


def archive_command(binary: str, config: Path) -> str:
    """The archive_command pushing each WAL segment to both stanzas."""
    push = [f"{binary} --config={config} --stanza={name} archive-push %p" for name in STANZAS]
    return "'" + " && ".join(push) + "'"


def init_archiving_primary(workdir: Path, binary: str) -> tuple[PgNode, Path]:
    """Create (not start) a primary archiving to both stanzas, and its pgbackrest.conf."""
    from tests.services.postgres import init_primary

    config = workdir / "pgbackrest.conf"
    node = init_primary(
        workdir, "archiving", archive_mode="on", archive_command=archive_command(binary, config)
    )
    write_config(workdir, node)
    return node, config


def take_backups(repo: BackRestRepo) -> None:
    """Create both stanzas; back up ``stale`` once, then fail to; back up ``main`` thrice."""
    for stanza in (STALE, FRESH):
        repo.must(f"--stanza={stanza}", "stanza-create")
    repo.must(f"--stanza={STALE}", "check")
    repo.must(f"--stanza={STALE}", "backup", "--type=full")
    repo.failed_exit_code = _failed_backup(repo)

    for kind in ("full", "diff", "incr"):
        repo.must(f"--stanza={FRESH}", "backup", f"--type={kind}")


def _failed_backup(repo: BackRestRepo) -> int:
    # `stop` makes every later backup of the stanza fail at once: a run that never completes.
    repo.must(f"--stanza={STALE}", "stop")
    try:
        return repo.run(f"--stanza={STALE}", "backup", "--type=incr").returncode
    finally:
        repo.must(f"--stanza={STALE}", "start")


@pytest.fixture(scope="session")
def pgbackrest_repo() -> Iterator[BackRestRepo]:
    """Two pgBackRest stanzas with backups on a dedicated archiving primary."""
    from tests.services.postgres import make_workdir

    binary = require_binary("pgbackrest", PGBACKREST_INSTALL)
    workdir = make_workdir("tw-pgbr-")
    node, config = init_archiving_primary(workdir, binary)
    try:
        node.start()
        repo = BackRestRepo(node, config, workdir, binary)
        take_backups(repo)
        yield repo
    finally:
        if node.running:
            node.stop()
        shutil.rmtree(workdir, ignore_errors=True)
