"""The code keeps to the lint rules and type-checks (line length, imports, naming, types)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_finds_nothing():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--output-format", "concise", str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing(tmp_path):
    packages = [
        "tillwatch",
        "pipeline",
        "collectors",
        "detectors",
        "alerts",
        "estate",
        "dashboards",
    ]

    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path), *packages],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        cwd=ROOT,
    )

    assert result.returncode == 0, result.stdout + result.stderr
