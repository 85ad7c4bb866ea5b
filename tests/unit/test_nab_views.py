"""The ensemble views added for NAB's misses: changes that stay inside the usual range."""

from __future__ import annotations

import math

import numpy as np

from detectors.ensemble import Ensemble, EnsembleConfig

STEP = 300.0  # NAB's artificial series: one sample every five minutes
PER_DAY = int(86_400 / STEP)
# Length at which a run of one value is news when no earlier run reached the floor.
RUN_BAR = math.ceil(EnsembleConfig().run_floor * (1 + EnsembleConfig().run_margin))
START = 1_767_571_200.0  # a UTC midnight


def _daily_wave(days: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = START + STEP * np.arange(days * PER_DAY)
    hours = (ts % 86_400) / 3_600
    return ts, 50 + 30 * np.sin(2 * np.pi * hours / 24) + rng.normal(0, 1, len(ts))


def _scores(config: EnsembleConfig, ts: np.ndarray, value: np.ndarray) -> np.ndarray:
    ensemble = Ensemble(1, config)
    slot = np.zeros(1, dtype=np.int64)
    return np.array([ensemble.step(slot, ts[i : i + 1], value[i : i + 1])[0]
                     for i in range(len(ts))])


def test_a_flat_day_inside_the_usual_range_is_found_by_the_phase_view():
    ts, value = _daily_wave(10, seed=7)
    flat = slice(8 * PER_DAY, 9 * PER_DAY)
    value[flat] = 50 + np.random.default_rng(8).normal(0, 1, PER_DAY)

    with_phase = _scores(EnsembleConfig(), ts, value)
    without = _scores(EnsembleConfig(phase_decades=1e6), ts, value)

    assert with_phase[flat].max() >= 0.5
    assert without[flat].max() < 0.47  # no other view sees it: it stays inside the range


def test_ordinary_days_raise_no_alarm_once_the_phase_view_speaks():
    ts, value = _daily_wave(10, seed=9)

    scores = _scores(EnsembleConfig(), ts, value)

    assert scores[3 * PER_DAY :].max() < 0.47


def _noise_with_a_spike(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = START + STEP * np.arange(400)
    value = 60 + rng.normal(0, 1, len(ts))
    value[200] = 75  # fires and starts a hold of 100 samples
    return ts, value


def test_a_fall_far_below_anything_seen_breaks_the_hold_of_an_earlier_alarm():
    ts, value = _noise_with_a_spike(seed=11)
    value[230] = 20  # the speed_7578 shape: far below any value the series has shown

    breaking = _scores(EnsembleConfig(), ts, value)
    holding = _scores(EnsembleConfig(hold_break=np.inf), ts, value)

    assert breaking[200] >= 0.47 and holding[200] >= 0.47
    assert breaking[230] == 1.0
    assert holding[230] == 0.0


def test_a_repeat_of_the_held_event_stays_damped():
    ts, value = _noise_with_a_spike(seed=12)
    value[230] = 75.5  # the burst again, a little higher: part of the event already reported

    scores = _scores(EnsembleConfig(), ts, value)
    undamped = _scores(EnsembleConfig(damp=1.0), ts, value)

    assert scores[200] >= 0.47
    assert undamped[230] >= 0.47  # it would fire on its own
    assert scores[201:300].max() == 0.0


def test_the_hold_of_a_long_lived_series_is_capped():
    rng = np.random.default_rng(16)
    ts = START + STEP * np.arange(6_200)
    value = 60 + rng.normal(0, 1, len(ts))
    for at in (6_000, 6_150):  # a new high each time, a little beyond the last
        high, low = value[:at].max(), value[:at].min()
        value[at] = high + 0.05 * (high - low)
    uncapped = EnsembleConfig(hold_max=10**9)  # the hold is 3 % of 6,000 samples: 180

    scores = _scores(EnsembleConfig(hold_max=120), ts, value)
    held = _scores(uncapped, ts, value)

    assert scores[6_000] == 1.0 and held[6_000] == 1.0
    assert scores[6_150] == 1.0
    assert held[6_150] == 0.0


def test_an_event_that_keeps_its_view_alarmed_is_reported_once():
    rng = np.random.default_rng(31)
    ts = START + STEP * np.arange(3_000)
    value = rng.gamma(2.0, 1.0, len(ts))
    value[2_000:2_400] += np.linspace(0, 3, 400)  # a ramp: the level keeps moving away

    scores = _scores(EnsembleConfig(), ts, value)
    views = _deciding_views(ts, value)

    bounded = _scores(EnsembleConfig(hold_max=100), ts, value)

    alarms = [i for i in range(2_000, 3_000) if scores[i] >= 0.5]
    drift = [i for i in alarms if views[i] == "drift"]
    assert len(drift) == 1  # not again each time a hold of 100 samples runs out
    assert len(alarms) == 2  # the ramp's first new high, then the drift
    again = [i for i in range(drift[0] + 1, 3_000) if bounded[i] >= 0.5]
    assert again and again[0] - drift[0] <= 101  # no hold outlasts hold_max


def _idle_key_with_blips(seed: int, last_blip: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero most of the time, a small blip every 50 samples (runs of 49 zeros) until
    ``last_blip``, then zeros, then blips again from sample 1,000 (rogue_agent_key_hold)."""
    rng = np.random.default_rng(seed)
    ts = START + STEP * np.arange(1_200)
    value = np.zeros(len(ts))
    blips = np.r_[np.arange(0, last_blip + 1, 50), np.arange(1_000, 1_200, 50)]
    value[blips] = 1 + rng.poisson(2, len(blips))
    return ts, value


def test_a_value_stuck_far_longer_than_ever_before_is_found_by_the_repeat_view():
    ts, value = _idle_key_with_blips(seed=13, last_blip=750)
    passes = 751 + RUN_BAR - 1  # the run passes the floor of 50 samples by the margin

    scores = _scores(EnsembleConfig(), ts, value)
    without = _scores(EnsembleConfig(run_margin=np.inf), ts, value)

    assert scores[passes] == 1.0
    assert (scores[751:1_000] >= 0.47).sum() == 1  # reported once however long it lasts
    assert without[751:1_000].max() < 0.47  # zero is this series' level: no other view sees it


def test_a_stuck_counter_inside_the_hold_of_a_spike_is_reported_too():
    ts, value = _idle_key_with_blips(seed=13, last_blip=750)
    value[760] = 60.0  # a burst far beyond any blip: it fires and holds for 100 samples
    passes = 761 + RUN_BAR - 1  # then zeros from 761 on, longer than any run before

    scores = _scores(EnsembleConfig(), ts, value)
    views = _deciding_views(ts, value)

    assert scores[760] >= 0.47 and views[760] != "repeat"
    assert scores[passes] == 1.0 and views[passes] == "repeat"  # another view, another fault
    assert (scores[761:passes] >= 0.47).sum() == 0


def test_runs_as_long_as_usual_raise_no_repeat_alarm():
    ts, value = _idle_key_with_blips(seed=14, last_blip=1_000)

    scores = _scores(EnsembleConfig(), ts, value)
    without = _scores(EnsembleConfig(run_margin=np.inf), ts, value)

    np.testing.assert_array_equal(scores, without)


def _rising_saws(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Saw teeth that rise over 12 samples and drop at once, with a little noise."""
    rng = np.random.default_rng(seed)
    ts = START + STEP * np.arange(1_500)
    return ts, 10 * (np.arange(len(ts)) % 12) / 11 + rng.normal(0, 0.2, len(ts))


def test_falling_saws_inside_the_usual_range_are_found_by_the_shape_view():
    ts, value = _rising_saws(seed=15)
    falling = slice(1_200, 1_260)
    value[falling] = value[falling][::-1]  # the same values, each tooth now falls

    scores = _scores(EnsembleConfig(), ts, value)
    without = _scores(EnsembleConfig(shape_decades=1e6), ts, value)

    assert scores[falling].max() >= 0.47
    assert without[falling].max() < 0.47  # same values, same hours: no other view sees it


def test_the_shape_view_adds_no_alarm_to_ordinary_saws():
    ts, value = _rising_saws(seed=16)

    alarms = _scores(EnsembleConfig(), ts, value) >= 0.47
    without = _scores(EnsembleConfig(shape_decades=1e6), ts, value) >= 0.47

    assert not (alarms & ~without).any()


def _slow_slide(seed: int, slides: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Noise around 60 that slides to 57 over 300 samples from sample 1,500, after two
    early excursions (50 and 70) that put the slide inside the range already shown."""
    rng = np.random.default_rng(seed)
    ts = START + STEP * np.arange(2_400)
    level = np.full(len(ts), 60.0)
    if slides:
        level[1_500:1_800] = np.linspace(60, 57, 300)
        level[1_800:] = 57
    value = level + rng.normal(0, 1, len(ts))
    value[[300, 600]] = [50, 70]
    return ts, value


def test_a_slow_slide_inside_the_range_is_found_first_by_the_drift_view():
    ts, value = _slow_slide(seed=19)

    scores = _scores(EnsembleConfig(), ts, value)
    without = _scores(EnsembleConfig(drift_decades=1e6), ts, value)

    first = 1_500 + int(np.flatnonzero(scores[1_500:] >= 0.47)[0])
    assert first < 1_700  # two thirds of the way down the slide
    assert without[1_500:1_700].max() < 0.47  # the level view has followed it all along
    assert _deciding_views(ts, value)[first] == "drift"


def test_a_level_that_stays_put_raises_no_drift_alarm():
    ts, value = _slow_slide(seed=20, slides=False)

    scores = _scores(EnsembleConfig(), ts, value)

    assert scores[1_000:].max() < 0.47


def _deciding_views(ts: np.ndarray, value: np.ndarray) -> list[str]:
    """The view that decided each sample's score."""
    ensemble = Ensemble(1)
    slot = np.zeros(1, dtype=np.int64)
    views = []
    for i in range(len(ts)):
        ensemble.step(slot, ts[i : i + 1], value[i : i + 1])
        views += ensemble.deciding_view(slot)
    return views


def test_each_alarm_names_the_view_that_raised_it():
    ts, value = _idle_key_with_blips(seed=13, last_blip=750)
    stuck = 751 + RUN_BAR - 1
    saw_ts, saws = _rising_saws(seed=15)
    saws[1_200:1_260] = saws[1_200:1_260][::-1]
    wave_ts, wave = _daily_wave(10, seed=7)
    wave[8 * PER_DAY : 9 * PER_DAY] = 50.0

    assert _deciding_views(ts, value)[stuck] == "repeat"
    saw_alarms = np.flatnonzero(_scores(EnsembleConfig(), saw_ts, saws)[1_200:1_260] >= 0.47)
    assert _deciding_views(saw_ts, saws)[1_200 + int(saw_alarms[0])] == "shape"
    wave_alarms = np.flatnonzero(_scores(EnsembleConfig(), wave_ts, wave) >= 0.47)
    flat_alarm = wave_alarms[wave_alarms >= 8 * PER_DAY][0]
    assert _deciding_views(wave_ts, wave)[int(flat_alarm)] == "phase"


def test_the_shape_reservoir_survives_a_snapshot(tmp_path):
    # The reservoir is float32 pairs packed into the float64 table: saving and loading
    # must keep their bits, or the restored view would judge against garbage.
    ts, value = _rising_saws(seed=17)
    value[1_300:1_360] = value[1_300:1_360][::-1]
    running, slot = Ensemble(1), np.zeros(1, dtype=np.int64)
    for i in range(1_000):
        running.step(slot, ts[i : i + 1], value[i : i + 1])
    running.save(tmp_path / "ensemble.npy")
    restored = Ensemble(1)
    restored.load(tmp_path / "ensemble.npy")

    after = [(running.step(slot, ts[i : i + 1], value[i : i + 1])[0],
              restored.step(slot, ts[i : i + 1], value[i : i + 1])[0])
             for i in range(1_000, len(ts))]

    assert [a for a, _ in after] == [b for _, b in after]
    assert max(a for a, _ in after) >= 0.47  # the falling saws are still found
