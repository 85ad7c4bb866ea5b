"""Configuration: embedded defaults, errors naming key and fix, secrets never shown."""

import json
from pathlib import Path

import pytest

from tillwatch import cli, config
from tillwatch.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tillwatch.toml"
    path.write_text(text)
    return path


def test_no_file_gives_the_embedded_defaults(monkeypatch):
    monkeypatch.delenv(config.ALERTMANAGER_ENV, raising=False)

    settings = config.load(None)

    assert settings.stream.url == "memory://"
    assert settings.storage.url.startswith("chdb://")
    assert settings.alerts.effective_alertmanager_url() is None


def test_alertmanager_url_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(config.ALERTMANAGER_ENV, "http://127.0.0.1:9093")

    assert config.load(None).alerts.effective_alertmanager_url() == "http://127.0.0.1:9093"


def test_every_error_is_listed_with_its_key_path_and_fix(tmp_path):
    path = _write(
        tmp_path,
        """
[stream]
url = "amqp://broker"
partitions = 0

[storage]
ttl_dayz = 3
""",
    )

    with pytest.raises(ConfigError) as error:
        config.load(path)

    message = str(error.value)
    assert "3 error(s)" in message
    assert "stream.url: " in message and "use memory:// or kafka://" in message
    assert "stream.partitions: " in message and "greater than or equal to 1" in message
    assert "storage.ttl_dayz: unknown key; remove it" in message


def test_invalid_toml_names_the_file_and_the_line(tmp_path):
    path = _write(tmp_path, "[stream\nurl = 1\n")

    with pytest.raises(ConfigError, match=r"tillwatch.toml: not valid TOML: .*line 1"):
        config.load(path)


def test_secret_references_resolve_from_env_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TW_TEST_SECRET", "s3cret-env")
    (tmp_path / "pw").write_text("s3cret-file\n")

    assert config.SecretRef(env="TW_TEST_SECRET").resolve().get_secret_value() == "s3cret-env"
    assert config.SecretRef(file=tmp_path / "pw").resolve().get_secret_value() == "s3cret-file"


def test_missing_secret_says_which_variable_to_export(monkeypatch):
    monkeypatch.delenv("TW_ABSENT", raising=False)

    with pytest.raises(ConfigError, match="TW_ABSENT is not set; export it"):
        config.SecretRef(env="TW_ABSENT").resolve()


def test_show_masks_secrets_and_credentials(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TW_CH_PASSWORD", "hunter2")
    path = _write(
        tmp_path,
        """
[storage]
url = "http://admin:hunter2@clickhouse:8123"
password = { env = "TW_CH_PASSWORD" }
""",
    )

    assert cli.main(["config", "show", "--config", str(path)]) == 0

    shown = capsys.readouterr().out
    assert "hunter2" not in shown
    assert json.loads(shown)["storage"]["url"] == "http://***@clickhouse:8123"
    assert json.loads(shown)["storage"]["password"] == {"env": "TW_CH_PASSWORD", "file": None}


def test_cli_check_prints_errors_without_a_traceback(tmp_path, capsys):
    path = _write(tmp_path, "[telemetry]\nlog_format = 'xml'\n")

    assert cli.main(["config", "check", str(path)]) == 2

    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "telemetry.log_format" in err and "Traceback" not in err


def test_cli_check_accepts_a_valid_file(tmp_path, capsys):
    path = _write(tmp_path, "[stream]\nurl = 'kafka://127.0.0.1:9092'\n")

    assert cli.main(["config", "check", str(path)]) == 0
    assert "ok" in capsys.readouterr().out


def test_every_flag_shows_its_environment_variable(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])

    help_text = " ".join(capsys.readouterr().out.split())
    for env in ("TILLWATCH_CONFIG", "TILLWATCH_ROLE", "TILLWATCH_DURATION"):
        assert f"[env: {env}]" in help_text


def test_a_collector_option_value_is_checked_before_the_collector_runs(tmp_path, capsys):
    path = _write(
        tmp_path,
        """
[[collectors]]
source = "traefik"
options = { metrics_url = "http://traefik:8082/metrics", latency_objective_seconds = 0 }
""",
    )

    assert cli.main(["config", "check", str(path)]) == 2

    err = capsys.readouterr().err
    assert "1 error(s)" in err and "Traceback" not in err
    assert (
        "collectors.0.options.latency_objective_seconds: must be a positive number of "
        "seconds, found 0; set a bound of Traefik's request duration buckets, e.g. 0.3"
    ) in err
