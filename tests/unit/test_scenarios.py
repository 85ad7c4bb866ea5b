"""Scenario files: every shipped one loads and shows on its root cause; bad ones say why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from estate.scenarios import (
    ScenarioError,
    builtin_paths,
    calendar_events,
    load_scenario,
    load_scenarios,
    simulate,
    week_offset,
)
from estate.simulator import DAY, WEEK, Estate, Simulator, by_series, layout
from tillwatch.config import DetectorSettings
from tillwatch.sample import parse_series_key
from tillwatch.stages import calendar_of

SEED = 21
REQUIRED = {
    "replica-lag-spike",
    "replication-broken",
    "redis-eviction-storm",
    "worker-pool-starved",
    "queue-backlog",
    "backup-failing",
    "tls-cert-near-expiry",
    "promotion-peak",
    "quiet-sunday-night",
}

VALID = """
name = "custom"
description = "a test scenario"

[ground_truth]
start = "tue 14:00"
end = "tue 15:00"
service = "redis"
signals = ["redis.hit_ratio"]
expected_tier = "ticket"

[[effects]]
target = "redis.hit_ratio"
op = "add"
value = -0.3
"""


@pytest.fixture(scope="module")
def baseline() -> dict[str, np.ndarray]:
    return by_series(Simulator(seed=SEED).run(duration=WEEK))


def _changed(
    run: dict[str, np.ndarray],
    base: dict[str, np.ndarray],
    signal: str,
    start: float,
    end: float,
) -> float:
    """The largest relative change of any series of ``signal`` inside the window.

    Both runs share every random draw, so any change is the scenario's doing.
    """
    largest = 0.0
    for key, rows in run.items():
        if parse_series_key(key)[0] != signal:
            continue
        inside = (rows[:, 0] >= start) & (rows[:, 0] < end)
        before, after = base[key][: len(rows)][inside, 1], rows[inside, 1]
        scale = np.maximum(np.abs(before).mean(), 1e-3)
        largest = max(largest, float(np.abs(after - before).max(initial=0.0) / scale))
    return largest


def test_every_required_scenario_ships_and_loads():
    scenarios = load_scenarios()

    assert {s.name for s in scenarios} >= REQUIRED
    assert len(builtin_paths()) == len(scenarios)
    tiers = {s.name: s.spec.ground_truth.expected_tier for s in scenarios}
    assert tiers["promotion-peak"] in ("none", "info")
    assert tiers["quiet-sunday-night"] == "none"
    assert tiers["worker-pool-starved"] == "page"


@pytest.mark.parametrize("path", builtin_paths(), ids=lambda p: p.stem)
def test_scenario_shows_on_its_root_cause_signals_and_kpis(path, baseline):
    scenario = load_scenario(path)
    simulator, (truth,) = simulate([scenario], seed=SEED)
    run = by_series(simulator.run(duration=WEEK))

    for signal in scenario.spec.ground_truth.signals:
        assert _changed(run, baseline, signal, truth.start, truth.end) > 0.15, signal
    for kpi in truth.affected_kpis:
        assert _changed(run, baseline, kpi, truth.start, truth.end) > 0.15, kpi


QUIET = [
    p for p in builtin_paths() if load_scenario(p).spec.ground_truth.expected_tier != "page"
]


@pytest.mark.parametrize("path", QUIET, ids=lambda p: p.stem)
def test_scenarios_that_expect_no_page_leave_checkout_within_budget(path):
    scenario = load_scenario(path)
    simulator, (truth,) = simulate([scenario], seed=SEED)
    run = by_series(simulator.run(duration=WEEK))

    checked = 0
    for key, rows in run.items():
        if key.startswith("traefik.path_latency_p95_seconds"):
            inside = (rows[:, 0] >= truth.start) & (rows[:, 0] < truth.end)
            assert rows[inside, 1].max(initial=0.0) < 2.5, key
            checked += 1
    assert checked == 2


def test_the_promotion_triples_web_orders_without_saturating_the_platform(baseline):
    # The flash sale is good news: every router answers well under the shops' 2.5 s
    # checkout budget, 5xx stay at their floor, and web orders follow the tripled demand.
    [promotion] = [p for p in builtin_paths() if p.stem == "promotion-peak"]
    simulator, (truth,) = simulate([load_scenario(promotion)], seed=SEED)
    run = by_series(simulator.run(duration=WEEK))

    def inside(key: str, rows: np.ndarray) -> np.ndarray:
        return rows[(rows[:, 0] >= truth.start) & (rows[:, 0] < truth.end), 1]

    for key, rows in run.items():
        if key.startswith("traefik.latency_p95_seconds"):
            assert inside(key, rows).max() < 1.5, key
        if key.startswith("traefik.server_error_ratio"):
            assert inside(key, rows).max() < 0.01, key
    [web] = [k for k in run if k.startswith("kpi.orders_per_minute") and "website" in k]
    ratio = inside(web, run[web]).sum() / inside(web, baseline[web]).sum()
    assert 2.7 < ratio < 3.3


def test_effects_default_to_the_ground_truth_window_and_may_move(tmp_path):
    path = tmp_path / "moved.toml"
    path.write_text(VALID + 'start = "wed 00:00"\nend = "wed 01:30"\n')

    scenario = load_scenario(path)
    (effect,) = scenario.effects(epoch=0.0)
    assert (effect.start, effect.end) == (2 * DAY, 2 * DAY + 5400)
    incident = scenario.incident(epoch=100.0)
    assert (incident.start, incident.end) == (100 + DAY + 14 * 3600, 100 + DAY + 15 * 3600)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("mon 00:00", 0),
        ("tue 14:30", DAY + 14.5 * 3600),
        ("SUN 24:00", WEEK),
        ("fri 9:05", 4 * DAY + 9 * 3600 + 300),
    ],
)
def test_week_offsets(text, seconds):
    assert week_offset(text) == seconds


@pytest.mark.parametrize(
    "text", ["tuesday 14:00", "tue 25:00", "tue 14:60", "sun 24:01", "14:00"]
)
def test_bad_week_offsets_are_refused(text):
    with pytest.raises(ValueError, match="such as 'tue 14:00'"):
        week_offset(text)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broken.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda t: t.replace('op = "add"', 'op = "add"\nfactor = 2'),
            r"effects\.0\.factor.*remove it",
        ),
        (
            lambda t: t.replace('start = "tue 14:00"', 'start = "tuesday 2pm"'),
            r"ground_truth\.start.*'tue 14:00'",
        ),
        (
            lambda t: t.replace('expected_tier = "ticket"', ""),
            r"ground_truth\.expected_tier.*add it",
        ),
        (lambda t: t.replace('op = "add"', 'op = "scale"'), r"effects\.0\.op.*one of"),
        (
            lambda t: t.replace('target = "redis.hit_ratio"', 'target = "redis.hits"'),
            r"effects\[0\]\.target.*redis\.hit_ratio",
        ),
        (
            lambda t: t.replace("value = -0.3", 'value = -0.3\nlabels = { instance = "x" }'),
            r"effects\[0\]\.labels.*redis-1:6379",
        ),
        (
            lambda t: t.replace('end = "tue 15:00"', 'end = "tue 13:00"'),
            r"ground_truth\.end.*not after start",
        ),
        (
            lambda t: t.replace('signals = ["redis.hit_ratio"]', 'signals = ["redis.hits"]'),
            r"ground_truth\.signals.*redis\.hit_ratio",
        ),
        (
            lambda t: t.replace(
                "[ground_truth]", "[ground_truth]\naffected_kpis = ['kpi.orders']"
            ),
            r"affected_kpis.*kpi\.orders_per_minute",
        ),
        (lambda t: t.replace('name = "custom"', 'name = "custom'), r"cannot read scenario"),
        (
            lambda t: t + '[[calendar]]\nname = "sale"\nlabels = { store = "paris" }\n',
            r"calendar\[0\]\.labels.*KPIs only",
        ),
        (
            lambda t: t + '[[calendar]]\nname = "sale"\nstart = "tue 16:00"\n',
            r"calendar\[0\]\.end.*not after",
        ),
        (lambda t: t + "[[calendar]]\nstart = 'tue 14:00'\n", r"calendar\.0\.name.*add it"),
    ],
)
def test_invalid_scenarios_name_the_file_the_key_and_the_fix(tmp_path, edit, expected):
    path = _write(tmp_path, edit(VALID))

    with pytest.raises(ScenarioError, match=expected) as error:
        load_scenario(path)
    assert str(path) in str(error.value)


def test_two_scenarios_with_one_name_are_refused(tmp_path):
    (tmp_path / "a.toml").write_text(VALID)
    (tmp_path / "b.toml").write_text(VALID)

    with pytest.raises(ScenarioError, match="already used"):
        load_scenarios([tmp_path])


def test_a_folder_of_user_scenarios_runs_with_its_effect(tmp_path, baseline):
    (tmp_path / "custom.toml").write_text(VALID)
    scenarios = load_scenarios([tmp_path])
    simulator, truth = simulate(scenarios, seed=SEED)

    run = by_series(simulator.run(duration=2 * DAY))
    assert [t.name for t in truth] == ["custom"]
    assert _changed(run, baseline, "redis.hit_ratio", truth[0].start, truth[0].end) > 0.25


def test_calendar_entries_become_the_detector_events_a_user_would_configure(tmp_path):
    (tmp_path / "custom.toml").write_text(
        VALID
        + '[[calendar]]\nname = "sale"\nlabels = { sales_channel = "website" }\n'
        + '[[calendar]]\nname = "stocktake"\nstart = "wed 06:00"\nend = "wed 08:00"\n'
    )
    estate = Estate(epoch=Estate().epoch + 3 * WEEK)

    sale, stocktake = calendar_events(load_scenarios([tmp_path]), estate)

    assert (sale.name, sale.labels) == ("sale", {"sales_channel": "website"})
    assert (sale.start, sale.end) == ("2026-01-27T14:00:00+00:00", "2026-01-27T15:00:00+00:00")
    assert (stocktake.start, stocktake.labels) == ("2026-01-28T06:00:00+00:00", {})


def test_the_promotion_calendar_masks_webshop_kpis_during_the_sale_only():
    estate = Estate()
    [promotion] = [s for s in load_scenarios(estate=estate) if s.name == "promotion-peak"]
    truth = promotion.incident(estate.epoch)
    calendar = calendar_of(DetectorSettings(events=promotion.calendar(estate.epoch)))
    ts = np.array([truth.start - 60, truth.start, truth.end - 60, truth.end])

    stores = layout(estate)["kpi.orders_per_minute"]
    web = [labels for labels in stores if labels["sales_channel"] == "website"]
    shops = [labels for labels in stores if labels["sales_channel"] == "pos"]

    assert len(web) == 1 and len(shops) == 4
    assert calendar.masked(ts, web[0]).tolist() == [False, True, True, False]
    assert not any(calendar.masked(ts, labels).any() for labels in shops)
