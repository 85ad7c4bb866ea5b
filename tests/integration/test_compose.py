"""compose.yaml runs the whole stack where a Docker engine exists; here it is checked only."""

import subprocess
from pathlib import Path

import yaml

from tests.services._support import require_binary

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_is_valid_and_runs_every_role():
    docker_compose = require_binary("docker-compose")

    result = subprocess.run(
        [docker_compose, "-f", str(ROOT / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    roles = {
        " ".join(s.get("command", []))
        for s in services.values()
        if s.get("image") == "tillwatch:dev"
    }
    assert roles == {
        f"tillwatch run --role {r}" for r in ("collector", "sink", "detector", "notifier")
    }
    for component in (
        "kafka",
        "clickhouse",
        "alertmanager",
        "grafana",
        "postgres-replica",
        "traefik",
    ):
        assert component in services


def test_compose_mounts_only_files_that_exist():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())

    mounted = [
        volume.split(":")[0]
        for service in compose["services"].values()
        for volume in service.get("volumes", [])
        if volume.startswith("./")
    ]
    assert mounted, "expected bind mounts of project files"
    missing = [path for path in mounted if not (ROOT / path).exists()]
    assert missing == []
