"""PostgreSQL 15 primary + streaming replica, started once per test session.

Fixtures (colleagues build on these; keep names and attributes stable):

``pg_cluster`` (session)
    A :class:`PgCluster` with ``.primary`` and ``.replica``, two :class:`PgNode`. The
    replica streams from the primary (``pg_basebackup -R -X stream``) as
    ``application_name`` ``"replica"``. ``pg_cluster.replay_paused()`` and
    ``pg_cluster.replica_stopped()`` are context managers that always put the cluster back
    (replay resumed, replica streaming again), so one test cannot break the next.
``pg_primary``
    ``pg_cluster.primary``.
``pg_database`` (function)
    Creates a uniquely named database on the primary, yields its DSN (a libpq keyword
    string, user ``postgres``, no password) and drops it afterwards.

A :class:`PgNode` has ``.name``, ``.host`` (``127.0.0.1``), ``.port``,
``.dsn(dbname="postgres", user="postgres") -> str``, ``.sql(query, params=None) ->
list[tuple]`` (autocommit, one connection per call), ``.stop()`` and ``.start()``
(which returns once the node answers a query and, for the replica, streams again).

Both nodes trust every loopback connection; a role ``tillwatch_pw`` (password
``right-password``, ``pg_monitor``) is the one exception that must authenticate with
scram-sha-256, so tests can provoke ``auth_failed``. ``fsync`` and autovacuum are off:
the data is throwaway, and autovacuum workers would add transactions to the statistics
tests count. The server processes run as the ``postgres`` OS user (initdb and postgres
refuse root) in a temp dir it owns.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.services._support import free_port, wait_until

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_INSTALL = (
    "apt-get install postgresql (Debian's PostgreSQL 15), or run scripts/install-system-deps.sh"
)
OS_USER = "postgres"
PASSWORD_ROLE = "tillwatch_pw"
PASSWORD = "right-password"

# Small and fast: two nodes share a 2-core machine with other engineers' tests.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "wal_level": "replica",
    "max_wal_senders": "5",
    "max_connections": "60",
    "shared_buffers": "16MB",
    "fsync": "off",
    "full_page_writes": "off",
    "autovacuum": "off",
    "wal_receiver_status_interval": "1s",
    "hot_standby": "on",
}


def pg_tool(name: str) -> str:
    """Return the path of a PostgreSQL 15 server binary, or fail naming how to install it."""
    path = PG_BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: {PG_INSTALL}", pytrace=False)
    return str(path)


def run_as_postgres(args: list[str], cwd: Path, timeout: float = 120.0) -> str:
    """Run a command as the ``postgres`` OS user; fail the test with its output on error."""
    command = ["runuser", "-u", OS_USER, "--", *args]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr}")
    return done.stdout


def make_workdir(prefix: str) -> Path:
    """Create a temp dir the ``postgres`` OS user owns (pytest's tmp dirs are root-only)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    shutil.chown(path, OS_USER, OS_USER)
    path.chmod(0o755)
    return path


def write_settings(data_dir: Path, settings: dict[str, str]) -> None:
    """Append settings to a node's postgresql.conf; later lines win over earlier ones."""
    lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
    with (data_dir / "postgresql.conf").open("a") as conf:
        conf.write("\n# tillwatch test fixture\n" + lines)


@dataclass
class PgNode:
    """One PostgreSQL server of the test cluster."""

    name: str
    data_dir: Path
    port: int
    workdir: Path
    upstream: PgNode | None = None
    host: str = "127.0.0.1"
    running: bool = field(default=False, init=False)

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        """Return a libpq keyword DSN for this node (no password: loopback is trusted)."""
        address = f"host={self.host} port={self.port}"
        return f"{address} dbname={dbname} user={user} connect_timeout=5"

    def sql(self, query: str, params: Any = None, dbname: str = "postgres") -> list[tuple]:
        """Run one statement in autocommit and return its rows (empty without a result)."""
        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def start(self) -> None:
        """Start the server and wait until it answers, and streams if it is a replica."""
        log_file = self.workdir / f"{self.name}.log"
        run_as_postgres(
            [pg_tool("pg_ctl"), "-D", str(self.data_dir), "-l", str(log_file), "-w", "start"],
            self.workdir,
        )
        self.running = True
        wait_until(self._answers, f"postgres {self.name} on port {self.port}")
        if self.upstream is not None:
            wait_until(self._streams, f"replica {self.name} streaming from the primary")

    def stop(self) -> None:
        """Stop the server (fast mode: clients are disconnected)."""
        run_as_postgres(
            [pg_tool("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
            self.workdir,
        )
        self.running = False

    def _answers(self) -> bool:
        try:
            return self.sql("SELECT 1") == [(1,)]
        except psycopg.OperationalError:
            return False

    def _streams(self) -> bool:
        assert self.upstream is not None
        rows = self.upstream.sql(
            "SELECT 1 FROM pg_stat_replication WHERE application_name = %s"
            " AND state = 'streaming' AND replay_lsn IS NOT NULL",
            (self.name,),
        )
        return bool(rows)


@dataclass
class PgCluster:
    """A primary and one streaming replica of it."""

    primary: PgNode
    replica: PgNode
    workdir: Path

    @contextmanager
    def replay_paused(self) -> Iterator[None]:
        """Pause WAL replay on the replica for the block; replay resumes afterwards."""
        self.replica.sql("SELECT pg_wal_replay_pause()")
        try:
            wait_until(self._replay_is_paused, "replay pause on the replica")
            yield
        finally:
            self.replica.sql("SELECT pg_wal_replay_resume()")

    @contextmanager
    def replica_stopped(self) -> Iterator[None]:
        """Stop the replica for the block; it is started and streaming again afterwards."""
        self.replica.stop()
        try:
            yield
        finally:
            self.replica.start()

    def stop(self) -> None:
        """Stop both nodes, replica first, ignoring one that is already down."""
        for node in (self.replica, self.primary):
            if node.running:
                node.stop()

    def _replay_is_paused(self) -> bool:
        return self.replica.sql("SELECT pg_get_wal_replay_pause_state()") == [("paused",)]


def init_primary(workdir: Path, name: str = "primary", **settings: str) -> PgNode:
    """Create (not start) a primary in ``workdir/name``; ``settings`` go to postgresql.conf.

    Also used by the pgBackRest fixture for its own archiving primary.
    """
    node = PgNode(name, workdir / name, free_port(), workdir)
    run_as_postgres(
        [pg_tool("initdb"), "-D", str(node.data_dir), "-U", "postgres", "-A", "trust",
         "--no-sync", "-E", "UTF8", "--locale=C"],
        workdir,
    )
    write_settings(node.data_dir, {**SERVER_SETTINGS, **_node_settings(node), **settings})
    _require_password_for_test_role(node.data_dir)
    return node


def init_replica(primary: PgNode, name: str = "replica") -> PgNode:
    """Clone a running primary into a streaming replica (created, not started)."""
    node = PgNode(name, primary.workdir / name, free_port(), primary.workdir, upstream=primary)
    run_as_postgres(
        [pg_tool("pg_basebackup"), "-D", str(node.data_dir), "-h", primary.host,
         "-p", str(primary.port), "-U", "postgres", "-R", "-X", "stream", "--no-sync"],
        primary.workdir,
    )
    write_settings(node.data_dir, _node_settings(node))
    return node


def _node_settings(node: PgNode) -> dict[str, str]:
    # cluster_name doubles as the walreceiver's application_name on the primary.
    return {
        "port": str(node.port),
        "unix_socket_directories": f"'{node.workdir}'",
        "cluster_name": f"'{node.name}'",
    }


def _require_password_for_test_role(data_dir: Path) -> None:
    hba = data_dir / "pg_hba.conf"
    scram = f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
    hba.write_text(scram + hba.read_text())


def create_password_role(node: PgNode) -> None:
    """Create the ``tillwatch_pw`` monitoring role, which must log in with a password."""
    node.sql(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{PASSWORD}' IN ROLE pg_monitor")


def start_cluster(workdir: Path) -> PgCluster:
    """Initialise and start a primary and its streaming replica in ``workdir``."""
    primary = init_primary(workdir)
    primary.start()
    create_password_role(primary)

    replica = init_replica(primary)
    replica.start()
    return PgCluster(primary, replica, workdir)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A running primary and streaming replica, shared by the whole session."""
    workdir = make_workdir("tw-pg-")
    cluster: PgCluster | None = None
    try:
        cluster = start_cluster(workdir)
        yield cluster
    finally:
        _shutdown(cluster, workdir)


def _shutdown(cluster: PgCluster | None, workdir: Path) -> None:
    if cluster is not None:
        cluster.stop()
    else:
        _stop_stray_servers(workdir)
    shutil.rmtree(workdir, ignore_errors=True)


def _stop_stray_servers(workdir: Path) -> None:
    # Start-up failed half way: stop whatever node got as far as writing a pid file.
    for pid_file in workdir.glob("*/postmaster.pid"):
        subprocess.run(
            ["runuser", "-u", OS_USER, "--", pg_tool("pg_ctl"), "-D", str(pid_file.parent),
             "-m", "immediate", "stop"],
            cwd=workdir, capture_output=True, check=False,
        )


@pytest.fixture
def pg_primary(pg_cluster: PgCluster) -> PgNode:
    """The primary of the session cluster."""
    return pg_cluster.primary


@pytest.fixture
def pg_database(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh, uniquely named database on the primary; yields its DSN."""
    name = f"tw_{uuid.uuid4().hex[:12]}"
    primary = pg_cluster.primary
    primary.sql(f'CREATE DATABASE "{name}"')
    try:
        yield primary.dsn(name)
    finally:
        primary.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_name(dsn: str) -> str:
    """Return the ``dbname`` of a DSN from :func:`pg_database`."""
    return str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])


__all__ = [
    "PgCluster",
    "PgNode",
    "database_name",
    "init_primary",
    "make_workdir",
    "pg_cluster",
    "pg_database",
    "pg_primary",
    "run_as_postgres",
]
