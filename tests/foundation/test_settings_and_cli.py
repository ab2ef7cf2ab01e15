"""Configuration merging and the `horse` command's contract (exit codes, --json)."""

from __future__ import annotations

import json
import os
import subprocess
import re
import sys
from pathlib import Path

import pytest
import yaml

from flows.settings import DEFAULTS_FILE, ConfigError, HorseSettings, load_settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults_work_on_a_laptop():
    settings = load_settings()
    assert settings.model == "tiny"
    assert settings.ray.address is None
    assert settings.resolved_model().device == "cpu"


def test_every_default_is_written_once_in_defaults_yaml():
    """The settings models carry types and bounds only; a default added to a field would be a
    second home for it, drifting from configs/defaults.yaml."""
    sections = [HorseSettings] + [field.annotation for field in HorseSettings.model_fields.values()
                                  if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields")]
    with_default = [f"{model.__name__}.{name}" for model in sections for name, field in model.model_fields.items()
                    if not field.is_required()]
    assert with_default == [], "defaults belong in configs/defaults.yaml"


def test_readme_configuration_table_shows_the_defaults():
    defaults = yaml.safe_load(DEFAULTS_FILE.read_text())
    table = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) >= 6
    for keys_cell, defaults_cell in rows:
        keys = re.findall(r"`([^`]+)`", keys_cell)
        shown = [part.strip().strip("`") for part in defaults_cell.split(",")]
        assert len(keys) == len(shown), keys_cell
        for key, text in zip(keys, shown):
            value = defaults
            for part in key.split("."):
                value = value[part]
            expected = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
            assert text == expected or (value is None and text == "one per GPU"), f"README says {key} = {text}, defaults.yaml {expected}"


def test_yaml_then_env_then_flags(tmp_path, monkeypatch):
    config = tmp_path / "studio.yaml"
    config.write_text("store_url: s3://studio-renders/horse\nray: {address: auto, job_deadline_s: 60}\n")
    settings = load_settings(config)
    assert settings.store_url == "s3://studio-renders/horse"
    assert settings.ray.address == "auto" and settings.ray.job_deadline_s == 60
    assert settings.ray.max_in_flight_per_actor == 2, "unset keys keep their defaults"

    monkeypatch.setenv("HORSE_RAY__JOB_DEADLINE_S", "90")
    monkeypatch.setenv("HORSE_SCHEDULE__TIMEZONE", "America/New_York")
    settings = load_settings(config)
    assert settings.ray.job_deadline_s == 90, "environment beats the YAML file"
    assert settings.ray.address == "auto", "a nested env var leaves the file's sibling keys alone"
    assert settings.schedule.timezone == "America/New_York"

    assert load_settings(config, store_url="/tmp/x").store_url == "/tmp/x", "flags beat everything"


@pytest.mark.parametrize(
    "yaml_text, expected",
    [
        ("ray: {max_in_flight_per_actor: 0}", "ray.max_in_flight_per_actor"),
        ("schedule: {timezone: Mars/Olympus}", "schedule.timezone: Value error, unknown IANA timezone"),
        ("schedule: {cron: 'every night'}", "schedule.cron"),
        ("stor_url: /x", "stor_url: unknown key"),
        ("- a list", "top level must be a mapping"),
        ("ray: {address: [unclosed", "not valid YAML"),
    ],
)
def test_invalid_configuration_names_key_and_problem(tmp_path, yaml_text, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert expected in str(info.value)


def test_unknown_model_preset_is_a_config_error():
    with pytest.raises(ConfigError, match="model: 'no-such-model' is neither a preset"):
        load_settings(model="no-such-model").resolved_model()


def test_storage_options_never_show_in_repr():
    settings = load_settings(storage_options={"secret": "s3cr3t-value"})
    assert "s3cr3t-value" not in repr(settings)
    assert "s3cr3t-value" not in str(settings)


def horse(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_cli_invalid_config_exits_2_with_message_not_traceback(tmp_path):
    result = horse("doctor", "--json", env={"HORSE_RAY__MAX_RETRIES": "-1"})
    assert result.returncode == 2
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert "ray.max_retries" in document["error"]
    assert "Traceback" not in result.stderr


def test_doctor_json_reports_every_check(tmp_path):
    result = horse("doctor", "--json", "--store", str(tmp_path / "store"))
    document = json.loads(result.stdout)
    names = [check["name"] for check in document["checks"]]
    assert names == ["python", "torch", "gpus", "ray", "prefect", "encoders", "store"]
    by_name = {check["name"]: check for check in document["checks"]}
    for required in ("python", "torch", "ray", "prefect", "encoders", "store"):
        assert by_name[required]["ok"], by_name[required]
    assert by_name["gpus"]["required"] is False
    assert result.returncode == 0 and document["ok"] is True
    assert not list((tmp_path / "store" / ".doctor").iterdir()), "the probe cleans up after itself"


def test_doctor_reports_an_unwritable_store(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = horse("doctor", "--json", "--store", str(blocker / "store"))
    document = json.loads(result.stdout)
    store = next(c for c in document["checks"] if c["name"] == "store")
    assert store["ok"] is False and "not writable" in store["detail"]
    assert result.returncode == 1

