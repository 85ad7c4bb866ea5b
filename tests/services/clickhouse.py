"""The embedded ClickHouse engine (chDB) for tests.

chDB hosts one engine per process, bound to one data directory: opening a second path
raises. So the whole session shares one engine path, and each test gets its own freshly
migrated database on it. Tests that need storage should use the ``storage`` fixture
rather than open another path.
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.storage import Storage

INSTALL_CHDB = "chdb-core is not installed: run `.venv/bin/pip install -e '.[test]'`"


@pytest.fixture(scope="session")
def clickhouse_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one chDB data directory of this test session."""
    if importlib.util.find_spec("chdb") is None:
        pytest.fail(INSTALL_CHDB, pytrace=False)
    return tmp_path_factory.mktemp("chdb") / "engine"


@pytest.fixture
def clickhouse_url(clickhouse_path: Path) -> str:
    """The storage URL of the session's embedded engine."""
    return f"chdb://{clickhouse_path}"


@pytest.fixture
def storage(clickhouse_url: str) -> Iterator[Storage]:
    """A migrated Storage on a database no other test uses; dropped afterwards."""
    database = f"test_{uuid.uuid4().hex[:12]}"
    opened = Storage.open(clickhouse_url, database=database)
    try:
        yield opened
    finally:
        opened.client.command(f"DROP DATABASE IF EXISTS {database} SYNC")
        opened.close()
