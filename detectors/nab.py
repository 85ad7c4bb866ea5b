"""Run the ensemble over the Numenta Anomaly Benchmark and score it with NAB's rules.

Every file becomes one series; all series advance together through the ensemble's batch
path, in time order, one configuration for all. Results are written in NAB's format
(``<out>/tillwatch/<category>/tillwatch_<file>.csv``: timestamp, value, anomaly_score,
label) and scored for the three profiles with :mod:`detectors.nab_score`.

Usage: ``python -m detectors.nab --data ../shared/data/nab --out /tmp/nab-results``
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from detectors.base import BatchDetector
from detectors.ensemble import Ensemble, EnsembleConfig
from detectors.nab_score import PROFILES, FileRows, ProfileResult, score_at, score_corpus
from tillwatch.errors import ConfigError

log = logging.getLogger(__name__)

DETECTOR_NAME = "tillwatch"
SUBSETS = ("realAWSCloudwatch", "realKnownCause")

# NAB's re-optimised scoreboard (standard, low FP, low FN), for the report.
SCOREBOARD = {
    "ARTime": (74.9, 65.2, 80.4),
    "numenta HTM": (70.1, 63.2, 74.3),
    "CAD OSE": (69.9, 67.0, 73.2),
    "earthgecko Skyline": (58.2, 46.2, 63.8),
    "Random Cut Forest": (51.7, 38.4, 59.7),
    "Windowed Gaussian": (39.7, 20.9, 47.4),
}


@dataclass(frozen=True, slots=True)
class NabFile:
    """One benchmark file: its rows and its windows as row indices."""

    name: str
    ts: np.ndarray
    stamps: list[str]
    value: np.ndarray
    windows: list[tuple[int, int]]


@dataclass(slots=True)
class NabReport:
    """Scores of one benchmark run.

    Attributes:
        profiles: corpus result of each profile at its optimal threshold.
        subsets: normalised score of each subset (category) per profile, at the
            corpus threshold.
        config: the ensemble configuration used for every file.
        seconds: wall time of detection, scoring excluded.
        rows: rows scored.
    """

    profiles: dict[str, ProfileResult]
    subsets: dict[str, dict[str, float]] = field(default_factory=dict)
    config: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    rows: int = 0


def load_corpus(data_dir: Path) -> list[NabFile]:
    """Read every data file and its windows from a NAB checkout.

    Raises:
        ConfigError: when ``data_dir`` does not hold NAB's ``data/`` and ``labels/``.
    """
    labels_path = data_dir / "labels" / "combined_windows.json"
    if not labels_path.is_file():
        raise ConfigError(
            f"NAB data: {labels_path} not found; pass --data pointing at a NAB checkout "
            "(the directory holding data/ and labels/)"
        )
    windows = json.loads(labels_path.read_text())
    return [_load_file(data_dir / "data", name, spans)
            for name, spans in sorted(windows.items())]


def _load_file(root: Path, name: str, spans: list[list[str]]) -> NabFile:
    frame = pd.read_csv(root / name)
    stamps = pd.to_datetime(frame["timestamp"])
    ts = _seconds(stamps.to_numpy())
    rows = []
    for start, end in spans:
        first = int(np.searchsorted(ts, _seconds(np.array([start], "datetime64"))[0], "left"))
        last = int(np.searchsorted(ts, _seconds(np.array([end], "datetime64"))[0], "right")) - 1
        rows.append((first, last))
    return NabFile(name, ts, frame["timestamp"].tolist(), frame["value"].to_numpy(float), rows)


def _seconds(stamps: np.ndarray) -> np.ndarray:
    """Seconds since the epoch of naive UTC datetimes."""
    return stamps.astype("datetime64[ns]").astype(np.int64) / 1e9


def detect(files: Sequence[NabFile], make_detector: Callable[[int], BatchDetector], *,
           progress: bool) -> list:
    """Score every file with one detector, all files advancing together, causally.

    Args:
        files: the corpus.
        make_detector: builds the batch detector for a number of series slots (one
            configuration for every file).
        progress: show a progress bar.
    """
    order = sorted(range(len(files)), key=lambda i: -len(files[i].ts))
    lengths = np.array([len(files[i].ts) for i in order])
    width = int(lengths[0])
    ts = np.full((len(files), width), np.nan)
    value = np.full((len(files), width), np.nan)
    for slot, i in enumerate(order):
        ts[slot, : lengths[slot]] = files[i].ts
        value[slot, : lengths[slot]] = files[i].value

    detector = make_detector(len(files))
    scores = np.zeros_like(value)
    active = (lengths[None, :] > np.arange(width)[:, None]).sum(axis=1)
    for step in tqdm(range(width), disable=not progress, desc="nab", unit="step"):
        slots = np.arange(active[step])
        scores[slots, step] = detector.step(slots, ts[slots, step], value[slots, step])

    result: list = [None] * len(files)
    for slot, i in enumerate(order):
        result[i] = scores[slot, : lengths[slot]]
    return result


def write_results(out_dir: Path, files: Sequence[NabFile], scores: Sequence) -> None:
    """Write one NAB results CSV per file."""
    for file, score in zip(files, scores, strict=True):
        category, base = file.name.split("/", 1)
        target = out_dir / DETECTOR_NAME / category / f"{DETECTOR_NAME}_{base}"
        target.parent.mkdir(parents=True, exist_ok=True)
        label = np.zeros(len(score), dtype=int)
        for first, last in file.windows:
            label[first : last + 1] = 1
        pd.DataFrame(
            {"timestamp": file.stamps, "value": file.value, "anomaly_score": score,
             "label": label}
        ).to_csv(target, index=False)


def run_nab(data_dir: Path, out_dir: Path, *, progress: bool = True,
            config: EnsembleConfig | None = None) -> NabReport:
    """Run the ensemble over the corpus, write results and score the three profiles.

    Args:
        data_dir: NAB checkout holding ``data/`` and ``labels/``.
        out_dir: where results CSVs and ``summary.json`` go.
        progress: show a progress bar.
        config: ensemble configuration (the default one when omitted).

    Returns:
        The report: profile scores, subset scores, configuration, timing.

    Raises:
        ConfigError: when ``data_dir`` is not a NAB checkout.
    """
    config = config or EnsembleConfig()
    files = load_corpus(data_dir)
    started = time.perf_counter()
    scores = detect(files, lambda n: Ensemble(n, config), progress=progress)
    seconds = time.perf_counter() - started
    write_results(out_dir, files, scores)

    rows = [FileRows(f.name, s, f.windows) for f, s in zip(files, scores, strict=True)]
    report = NabReport({p.name: score_corpus(rows, p) for p in PROFILES},
                       config=asdict(config), seconds=seconds, rows=sum(map(len, scores)))
    for subset in SUBSETS:
        chosen = [r for r in rows if r.name.startswith(subset + "/")]
        if not chosen:
            continue  # a corpus without that category (a partial or custom one)
        report.subsets[subset] = {
            p.name: score_at(chosen, p, report.profiles[p.name].threshold) for p in PROFILES
        }
    _record(out_dir, report)
    return report


def _record(out_dir: Path, report: NabReport) -> None:
    """Write the summary and append the run to the run log beside the results."""
    summary = {
        "profiles": {name: asdict(result) for name, result in report.profiles.items()},
        "subsets": report.subsets, "config": report.config,
        "seconds": report.seconds, "rows": report.rows,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    with open(out_dir / "runs.jsonl", "a") as runs:
        runs.write(json.dumps(summary) + "\n")


def format_report(report: NabReport) -> str:
    """The report as a text table, tillwatch beside NAB's re-optimised scoreboard."""
    names = [p.name for p in PROFILES]
    lines = [f"{'detector':<24}{'standard':>10}{'low FP':>10}{'low FN':>10}"]
    ours = [report.profiles[n].normalised for n in names]
    lines.append(f"{'tillwatch':<24}" + "".join(f"{v:>10.1f}" for v in ours))
    for subset, by_profile in report.subsets.items():
        row = "".join(f"{by_profile[n]:>10.1f}" for n in names)
        lines.append(f"{'  ' + subset:<24}{row}")
    for name, board in SCOREBOARD.items():
        lines.append(f"{name:<24}" + "".join(f"{v:>10.1f}" for v in board))
    for name in names:
        r = report.profiles[name]
        lines.append(f"{name}: threshold {r.threshold:.4f}, TP {r.true_positives}, "
                     f"FP {r.false_positives}, FN {r.false_negatives}")
    rate = report.rows / report.seconds if report.seconds else 0.0
    lines.append(f"{report.rows} rows in {report.seconds:.1f} s ({rate:,.0f} rows/s)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m detectors.nab --data DIR [--out DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="NAB checkout directory")
    parser.add_argument("--out", type=Path, default=Path("nab-results"), help="results dir")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        report = run_nab(args.data, args.out, progress=not args.quiet)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
