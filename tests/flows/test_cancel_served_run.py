"""Cancelling a served deployment run, as the UI does, stops its Ray work and frees the GPUs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from prefect import get_client
from prefect.states import Cancelling

from flows.manifest import write_manifest

from .conftest import shot

pytestmark = pytest.mark.slow


def render_actor_processes(since: float) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline", "create_time"]):
        try:
            if process.info["create_time"] >= since and "RenderActor" in " ".join(process.info["cmdline"] or []):
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


def test_ui_cancel_of_a_served_run_leaves_no_actor_alive(prefect_api, tmp_path, tmp_store):
    rows = [shot(f"c{i}", f"Shot {i}: waves on a pebble beach.", aspect_ratios=["16:9", "9:16"]) for i in range(1, 5)]
    manifest = write_manifest(rows, tmp_path / "cancel.parquet")
    config = tmp_path / "horse.yaml"
    config.write_text("ray: {cpu_mode: true, num_actors: 2}\nrender: {chunk_size: 4}\n")
    receipts = Path(tmp_store.removeprefix("file://")) / "receipts"
    started = time.time()
    server = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--config", str(config), "--store", tmp_store],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=os.environ.copy())
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
        assert list(receipts.rglob("*.json")), "the run was rendering"
        assert render_actor_processes(started), "render actors are alive while it runs"

        async def cancel():
            async with get_client() as client:
                await client.set_flow_run_state(flow_run.id, Cancelling(), force=True)

        asyncio.run(cancel())
        final = asyncio.run(_wait_for(flow_run.id, lambda r: r.state.is_final(), 120))
        assert final.state.is_cancelled(), final.state

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and render_actor_processes(started):
            time.sleep(0.5)
        assert render_actor_processes(started) == [], "no render actor outlives the cancelled run"
        assert len(list(receipts.rglob("*.json"))) < 16, "the run stopped before rendering everything"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
