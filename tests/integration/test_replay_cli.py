"""tillwatch replay: recorded samples through the pipeline; bad lines are dead-lettered."""

from __future__ import annotations

import json
import uuid

import pytest

from estate.simulator import Estate, Simulator
from pipeline.replay import write_recording
from tillwatch import cli

HOURS = 6 * 3600.0


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_replay_writes_outputs_and_dead_letters_bad_lines(
    tmp_path, clickhouse_url, suffix, capsys
):
    recording = tmp_path / f"history.{suffix}"
    written = write_recording(Simulator(Estate(), seed=3).run(duration=HOURS), recording)
    with recording.open("a") as out:
        out.write("this line is not a sample\n")
    config = tmp_path / "tillwatch.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[storage]\nurl = "{clickhouse_url}"\ndatabase = "replay_{uuid.uuid4().hex[:8]}"\n'
        "ttl_days = 3650\n"
    )

    status = cli.main(
        ["replay", str(recording), "--out", str(tmp_path / "out"), "--config", str(config)]
    )

    assert status == 0
    printed = capsys.readouterr().out
    assert f"{written:,} samples replayed" in printed
    assert "1 lines dead-lettered" in printed
    for name in ("anomalies.jsonl", "incidents.jsonl", "alerts.jsonl"):
        assert (tmp_path / "out" / name).exists()
    [dead] = (tmp_path / "data" / "deadletter.jsonl").read_text().splitlines()
    assert json.loads(dead)["stage"] == "replay"
    assert (
        f"history.{suffix}:{written + (2 if suffix == 'csv' else 1)}"
        in json.loads(dead)["detail"]
    )
