"""A new machine: the first command starts Prefect's embedded API server from an empty
PREFECT_HOME (its database migrations included) and works the first time; no analytics."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from flows.cli.command import LIBRARY_DEFAULTS
from tests.cli.cli_testlib import config_file, manifest, one_json_document

PROBE = ("import os, flows.cli; from prefect.settings import get_current_settings; s = get_current_settings(); "
         "print(s.server.ephemeral.startup_timeout_seconds, s.server.analytics_enabled, os.environ['DO_NOT_TRACK'])")


def descendants_when(process: subprocess.Popen, name: str, timeout: float) -> list[str]:
    """The command lines of the processes under `process` once one of them has `name` in its
    command line ([] if `process` ended first)."""
    root, deadline = psutil.Process(process.pid), time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        found = []
        for child in root.children(recursive=True):
            try:
                found.append(" ".join(child.cmdline()))
            except psutil.Error:
                pass
        if any(name in line for line in found):
            return found
        time.sleep(0.2)
    return []


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
    environment = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", *LIBRARY_DEFAULTS)}
    environment["PREFECT_HOME"] = str(tmp_path / "new-prefect-home")
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # another CPU-heavy process
    out, err = open(tmp_path / "stdout", "w+"), open(tmp_path / "stderr", "w+")  # files: a full pipe would block it
    process = subprocess.Popen([sys.executable, "-m", "flows.cli", "render", str(path), "--json", "--store", tmp_store,
                                "--config", config], env=environment, stdout=out, stderr=err, text=True)
    try:
        # The machine stays busy while Prefect's server starts and migrates its new database, up to
        # the moment the run starts its Ray cluster (the flow run is then under way on that server);
        # the render itself needs no burner beside it (it cost ~1 CPU for the whole test).
        running = descendants_when(process, "gcs_server", timeout=900)
        burner.kill()
        process.wait(timeout=900)
    finally:
        burner.kill()
        burner.wait()
        if process.poll() is None:
            process.kill()
            process.wait()
    with out, err:
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert running, f"the run never started its Ray cluster: {stderr[-3000:]}"
    assert any("prefect.server" in line for line in running), "Prefect's server started while the machine was busy"
    document = one_json_document(result)
    assert result.returncode == 0, (document, result.stderr[-3000:])
    assert document["rendered"] == 1
    assert "telemetry" not in result.stderr.lower()
