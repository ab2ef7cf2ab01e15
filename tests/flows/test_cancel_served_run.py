"""Cancelling a served deployment run, as the UI does, stops its Ray work and frees the GPUs.

The run renders on a `ray start` head that outlives it, as in production (a private cluster
would die with the flow process and hide a broken cancel path). Ray kills an actor whose owner
process died on its own, so "no actor left" alone proves little here: the cluster is asked how
each RenderActor died, and it must be `ray.kill` from the pool, not Ray reaping orphans.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from prefect import get_client
from prefect.states import Cancelling

from flows.manifest import write_manifest
from tests.conftest import free_port
from tests.infra._procs import kill_processes

from .conftest import shot

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture
def ray_head():
    """A loopback `ray start` head with the dashboard (Ray's state API lives there); its
    processes are found by temp dir and GCS address and killed by PID afterwards."""
    port, dashboard_port = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="hrc-", dir="/tmp")  # short: AF_UNIX paths
    try:
        subprocess.run(
            [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
             f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
             f"--temp-dir={temp_dir}", "--object-store-memory=100000000", "--disable-usage-stats"],
            env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}, check=True, capture_output=True, timeout=180)
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard_port}", "temp_dir": temp_dir}
    finally:
        kill_processes([temp_dir, f"127.0.0.1:{port}"])
        shutil.rmtree(temp_dir, ignore_errors=True)



def render_actor_processes(temp_dir: str) -> list[psutil.Process]:
    """RenderActor processes of the head in `temp_dir` (their raylet names it), not of any other
    Ray cluster on the machine."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if "RenderActor" in " ".join(process.info["cmdline"] or []) and any(
                    temp_dir in " ".join(parent.cmdline()) for parent in process.parents()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


async def _wait_for(flow_run_id, predicate, timeout_s: float):
    async with get_client() as client:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = await client.read_flow_run(flow_run_id)
            if predicate(run):
                return run
            await asyncio.sleep(0.5)
        return await client.read_flow_run(flow_run_id)


def forget_deployment(name: str) -> None:
    """Delete deployment `name` from the session's Prefect server if an earlier test made it (its
    parameters, another store among them, would be what a run of it renders with)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async def forget() -> None:
        async with get_client() as client:
            try:
                deployment = await client.read_deployment_by_name(name)
            except ObjectNotFound:
                return
            await client.delete_deployment(deployment.id)

    asyncio.run(forget())


def test_ui_cancel_of_a_served_run_leaves_no_actor_alive(prefect_api, ray_head, tmp_path, tmp_store):
    rows = [shot(f"c{i}", f"Shot {i}: waves on a pebble beach.", aspect_ratios=["16:9", "9:16"]) for i in range(1, 5)]
    manifest = write_manifest(rows, tmp_path / "cancel.parquet")
    config = tmp_path / "horse.yaml"
    config.write_text(f"ray: {{address: '{ray_head['address']}', cpu_mode: true, num_actors: 2}}\n"
                      "render: {chunk_size: 4}\n")
    receipts = Path(tmp_store.removeprefix("file://")) / "receipts"
    serve_log = tmp_path / "serve.log"   # quoted when the run does not get going
    forget_deployment("nightly-campaign-render/nightly")  # registered by `horse serve` below, not left by another test
    server = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--config", str(config), "--store", tmp_store],
                              stdout=serve_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy())
    try:
        from prefect.deployments import run_deployment

        flow_run = None
        deadline = time.monotonic() + 120
        while flow_run is None and time.monotonic() < deadline:
            try:
                flow_run = run_deployment("nightly-campaign-render/nightly", parameters={"manifest_uri": str(manifest)}, timeout=0)
            except Exception:  # the deployment is not registered yet
                time.sleep(1)
        assert flow_run is not None, "horse serve registered the nightly deployment"

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list(receipts.rglob("*.json")):
            time.sleep(0.3)
        assert list(receipts.rglob("*.json")), f"the run was rendering; horse serve said:\n{serve_log.read_text()[-4000:]}"
        assert render_actor_processes(ray_head["temp_dir"]), "render actors are alive while it runs"

        async def cancel():
            async with get_client() as client:
                await client.set_flow_run_state(flow_run.id, Cancelling(), force=True)

        asyncio.run(cancel())
        final = asyncio.run(_wait_for(flow_run.id, lambda r: r.state.is_final(), 120))
        assert final.state.is_cancelled(), final.state

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and render_actor_processes(ray_head["temp_dir"]):
            time.sleep(0.5)
        assert render_actor_processes(ray_head["temp_dir"]) == [], "no render actor outlives the cancelled run"
        assert len(list(receipts.rglob("*.json"))) < 16, "the run stopped before rendering everything"

        from ray.util.state import list_actors, list_nodes

        assert [n.state for n in list_nodes(address=ray_head["dashboard"])] == ["ALIVE"], "the cluster lives on"
        actors = list_actors(address=ray_head["dashboard"], filters=[("class_name", "=", "RenderActor")], detail=True)
        assert len(actors) >= 2 and {a.state for a in actors} == {"DEAD"}, actors
        reasons = {a.death_cause["actor_died_error_context"]["reason"] for a in actors}
        assert reasons == {"RAY_KILL"}, f"the cancelled run stopped its actors itself, not Ray after it died: {reasons}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
