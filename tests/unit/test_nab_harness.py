"""tillwatch bench nab on a small corpus in NAB's layout: results files and scores."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd

from detectors.ensemble import Ensemble, EnsembleConfig
from tillwatch import cli

ROWS = 1_200


def _corpus(root: Path) -> dict[str, list[list[str]]]:
    """Two files of seeded noise in NAB's layout, one with a labelled level jump."""
    rng = np.random.default_rng(42)
    stamps = pd.date_range("2026-01-05", periods=ROWS, freq="5min")
    windows: dict[str, list[list[str]]] = {}
    for category, name, jump in (
        ("realKnownCause", "jump.csv", True),
        ("artificialNoAnomaly", "flat.csv", False),
    ):
        value = 10 + rng.normal(0, 0.5, ROWS)
        if jump:
            value[900:] += 8.0
        folder = root / "data" / category
        folder.mkdir(parents=True)
        pd.DataFrame(
            {"timestamp": stamps.strftime("%Y-%m-%d %H:%M:%S"), "value": value}
        ).to_csv(folder / name, index=False)
        windows[f"{category}/{name}"] = [[str(stamps[880]), str(stamps[940])]] if jump else []
    (root / "labels").mkdir()
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    return windows


def test_bench_nab_writes_each_files_causal_scores_in_nab_format(tmp_path, capsys):
    _corpus(tmp_path / "nab")

    status = cli.main(
        ["bench", "nab", "--data", str(tmp_path / "nab"), "--out", str(tmp_path / "out")]
    )

    assert status == 0
    printed = capsys.readouterr().out
    assert "standard" in printed and "tillwatch" in printed
    result = tmp_path / "out" / "tillwatch" / "realKnownCause" / "tillwatch_jump.csv"
    with result.open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["timestamp", "value", "anomaly_score", "label"]
    assert len(rows) == ROWS
    assert {r["label"] for r in rows[880:941]} == {"1"} and rows[100]["label"] == "0"
    scores = np.array([float(r["anomaly_score"]) for r in rows])
    assert np.allclose(scores, _one_by_one([float(r["value"]) for r in rows], rows))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    standard = summary["profiles"]["standard"]
    assert standard["true_positives"] + standard["false_negatives"] == 1  # the one window
    assert 0.0 <= standard["normalised"] <= 100.0


def _one_by_one(values: list[float], rows: list[dict[str, str]]) -> np.ndarray:
    """The ensemble stepped alone over one file: what the harness must have written."""
    ensemble = Ensemble(1, EnsembleConfig())
    # pandas picks the parsed unit (microseconds in 3.x): fix it before counting seconds.
    stamps = pd.to_datetime([r["timestamp"] for r in rows]).as_unit("ns")
    ts = stamps.astype("int64") / 1e9
    slot = np.zeros(1, dtype=np.int64)
    return np.array(
        [
            ensemble.step(slot, np.array([t]), np.array([v]))[0]
            for t, v in zip(ts, values, strict=True)
        ]
    )
