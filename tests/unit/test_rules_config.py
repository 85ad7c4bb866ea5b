"""Rules for signals with known limits, configured in tillwatch.toml, reach the detectors."""

from pathlib import Path

from detectors.rules import DEFAULT_RULES, ThresholdRule
from detectors.stage import DetectorStage
from tillwatch import config
from tillwatch.sample import BatchBuilder
from tillwatch.stages import rules_of

TOML = """
[[detectors.rules]]
signal = "redis.hit_ratio"
limit = 0.5
above = false
min_duration_seconds = 120

[[detectors.burn_rates]]
signal = "traefik.server_error_ratio"
objective = 0.99
"""


def _load(tmp_path: Path, text: str) -> config.Settings:
    path = tmp_path / "tillwatch.toml"
    path.write_text(text)
    return config.load(path)


def test_configured_rules_come_before_the_builtin_table(tmp_path):
    rules = rules_of(_load(tmp_path, TOML).detectors)

    assert rules[0] == ThresholdRule("redis.hit_ratio", 0.5, min_duration=120.0, above=False)
    assert rules[1].pattern == "traefik.server_error_ratio" and rules[1].objective == 0.99
    assert rules[2:] == DEFAULT_RULES


def test_builtin_rules_can_be_switched_off(tmp_path):
    settings = _load(tmp_path, "[detectors]\nbuiltin_rules = false\n" + TOML)

    assert [rule.pattern for rule in rules_of(settings.detectors)] == [
        "redis.hit_ratio",
        "traefik.server_error_ratio",
    ]


def test_a_configured_limit_fires_only_after_its_minimum_duration(tmp_path):
    stage = DetectorStage(rules=rules_of(_load(tmp_path, TOML).detectors))
    verdicts = []
    for minute, hit_ratio in enumerate([0.9, 0.9, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4]):
        builder = BatchBuilder()
        builder.add(1.9e9 + 60 * minute, "redis.hit_ratio", {"instance": "cache-1"}, hit_ratio)
        verdicts.append(stage.process(builder.build()))

    # Fires once the limit has been broken for 2 minutes, then reminds every 2 minutes.
    assert [len(v) for v in verdicts] == [0, 0, 0, 0, 1, 0, 1, 0]
    assert verdicts[4][0].detector == "threshold"
    assert "0.5" in verdicts[4][0].explanation and verdicts[4][0].direction == "down"
