"""Shared pytest setup: every module in tests/services/ is a fixture plugin for a real service."""

from pathlib import Path

pytest_plugins = sorted(
    f"tests.services.{path.stem}"
    for path in (Path(__file__).parent / "services").glob("*.py")
    if not path.stem.startswith("_")
)
