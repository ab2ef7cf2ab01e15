"""A new machine: the first command starts Prefect's embedded API server from an empty
PREFECT_HOME (its database migrations included) and works the first time; no analytics."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flows.cli.command import LIBRARY_DEFAULTS
from tests.cli.cli_testlib import config_file, horse, manifest, one_json_document

PROBE = ("import os, flows.cli; from prefect.settings import get_current_settings; s = get_current_settings(); "
         "print(s.server.ephemeral.startup_timeout_seconds, s.server.analytics_enabled, os.environ['DO_NOT_TRACK'])")


def prefect_settings_seen_by_the_cli(**env: str) -> list[str]:
    environment = {k: v for k, v in __import__("os").environ.items() if k not in LIBRARY_DEFAULTS} | env
    result = subprocess.run([sys.executable, "-c", PROBE], env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split()


def test_prefect_gets_time_to_migrate_and_sends_no_analytics_unless_the_user_says_so():
    timeout, analytics, do_not_track = prefect_settings_seen_by_the_cli()
    assert int(timeout) >= 90, "Prefect's 20 s is shorter than a first start with migrations on 2 busy cores"
    assert analytics == "False" and do_not_track == "1"
    assert prefect_settings_seen_by_the_cli(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="33",
                                            PREFECT_SERVER_ANALYTICS_ENABLED="true")[:2] == ["33", "True"]


@pytest.mark.slow
def test_first_render_from_an_empty_prefect_home_on_a_busy_machine(tmp_path, tmp_store):
    path = manifest(tmp_path / "first.parquet", shots=1)
    config = config_file(tmp_path, "ray: {cpu_mode: true, num_actors: 1, job_deadline_s: 300}\n")
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # another CPU-heavy process
    try:
        result = horse("render", str(path), "--json", "--store", tmp_store, "--config", config, timeout=900,
                       env={"PREFECT_HOME": str(tmp_path / "new-prefect-home")},
                       unset=("PREFECT_API_URL", *LIBRARY_DEFAULTS))
    finally:
        burner.kill()
        burner.wait()
    document = one_json_document(result)
    assert result.returncode == 0, (document, result.stderr[-3000:])
    assert document["rendered"] == 1
    assert "telemetry" not in result.stderr.lower()
