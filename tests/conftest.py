"""Shared pytest setup: each module in tests/services/ is a fixture plugin for a service."""

from pathlib import Path

import pytest

# Service modules import one another (the Odoo schema needs PostgreSQL); registering the
# package first lets pytest rewrite asserts in whichever is imported first.
pytest.register_assert_rewrite("tests.services")

pytest_plugins = sorted(
    f"tests.services.{path.stem}"
    for path in (Path(__file__).parent / "services").glob("*.py")
    if not path.stem.startswith("_")
)
