"""A Prefect server on a real PostgreSQL runs the nightly flow end to end.

Debian's PostgreSQL (package `postgresql`) is started here in a temporary data directory, as the
`postgres` user when the tests run as root (initdb refuses root), listening on 127.0.0.1 only.
`prefect server start` runs on it (the compose file's setup, without Docker), and `horse render`
runs the nightly flow against that server in a separate process, as a worker's flow run would.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port, require

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    require(found, "the PostgreSQL server (apt-get install -y postgresql)")
    return Path(found[-1]).parent


def _as_postgres(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture
def postgres():
    bin_dir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="hpg-", dir="/tmp"))
    data, sockets, log = root / "data", root / "sock", root / "postgres.log"
    sockets.mkdir()
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for path in (root, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
    port = free_port()
    try:
        _as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"])
        _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
                      f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])
        _as_postgres([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "prefect"])
        yield {"port": port, "bin": bin_dir, "url": f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"}
    finally:
        subprocess.run((["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else [])
                       + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def psql(pg: dict, sql: str) -> str:
    return _as_postgres([str(pg["bin"] / "psql"), "-h", "127.0.0.1", "-p", str(pg["port"]), "-U", "postgres",
                         "-d", "prefect", "-tAc", sql]).stdout.strip()


@pytest.fixture
def prefect_on_postgres(postgres, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_DATABASE_CONNECTION_URL": postgres["url"],
        # Settings, not --host/--port: the UI's API URL is derived from these (environment.md §3).
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    log = open(tmp_path / "prefect-server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start"], env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prefect server did not come up:\n{(tmp_path / 'prefect-server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"api_url": api, "postgres": postgres}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_prefect_server_on_postgres_runs_the_nightly_flow(prefect_on_postgres, tmp_path, tmp_store):
    from flows.manifest import write_manifest

    manifest = write_manifest([{
        "campaign_id": "pg-nightly", "shot_id": "s001",
        "scene": "A horse trots along a beach at dawn.",
        "dialogue": [{"speaker": "rider", "language": "en", "line": "Easy now."}],
        "languages": ["en"], "aspect_ratios": ["16:9"], "resolution": "256p",
        "duration_s": 1.0, "takes": 1, "seed": 11,
    }], tmp_path / "pg-nightly.parquet")
    config = tmp_path / "horse.yaml"
    config.write_text("ray:\n  cpu_mode: true\n  num_actors: 1\n  job_deadline_s: 300\n")
    env = {**os.environ, "PREFECT_API_URL": prefect_on_postgres["api_url"], "PREFECT_HOME": str(tmp_path / "client-home"),
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "flows.cli", "render", str(manifest), "--json", "--store", tmp_store,
                           "--config", str(config)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    result = json.loads(done.stdout[done.stdout.index("{"):])
    assert result["rendered"] == 1, result

    # The server (and so Postgres) recorded the run as Completed ...
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def flow_runs():
        async with get_client() as client:
            return await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["nightly-campaign-render"])))

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_on_postgres["api_url"]}):
        runs = asyncio.run(flow_runs())
    assert [r.state_type.value for r in runs] == ["COMPLETED"], runs

    # ... in PostgreSQL's own tables: the flow run, its task runs, its artifacts.
    pg = prefect_on_postgres["postgres"]
    assert psql(pg, "select state_type from flow_run where id = '%s'" % runs[0].id) == "COMPLETED"
    assert int(psql(pg, "select count(*) from task_run where flow_run_id = '%s'" % runs[0].id)) >= 1
    assert int(psql(pg, "select count(*) from artifact where flow_run_id = '%s'" % runs[0].id)) >= 1
    assert psql(pg, "select version()").startswith("PostgreSQL")
