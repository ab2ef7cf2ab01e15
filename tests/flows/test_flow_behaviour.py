"""Backfills, broken rows, failures and artifacts, a killed run resumed: the flows as the studio
uses them (Prefect test server, local Ray, tiny model)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

from catalog import Store
from flows.manifest import write_manifest
from flows.nightly import backfill_variants, nightly_campaign_render
from flows.progress import progress_listener

from .conftest import shot

pytestmark = pytest.mark.slow


def settings_file(tmp_path: Path, **sections) -> str:
    import yaml

    # One actor (each actor's start costs ~7 CPU-s); the test that checks the pool's size asks for two.
    config = {"ray": {"cpu_mode": True, "num_actors": 1, "job_deadline_s": 300}, "render": {"chunk_size": 4}}
    for key, value in sections.items():
        config.setdefault(key, {}).update(value)
    path = tmp_path / "horse.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def artifacts_of(flow_run_id) -> dict[str, object]:
    async def read():
        async with get_client() as client:
            return await client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    found = asyncio.run(read())
    return {**{a.type: a for a in found}, **{a.key: a for a in found if a.key}}  # by type, and by key


def log_messages(flow_run_id, containing: str) -> list[str]:
    """The run's log lines that contain `containing` (logs reach the API in batches: wait a little)."""
    async def read():
        async with get_client() as client:
            return await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))

    deadline = time.monotonic() + 30
    while True:
        found = [log.message for log in asyncio.run(read()) if containing in log.message]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_backfill_adds_a_language_and_renders_only_new_variants(prefect_api, ray_cluster, tmp_path, tmp_store):
    manifest = write_manifest([shot("s100", "A cyclist stops at a red light and waves.", aspect_ratios=["16:9"])], tmp_path / "m.parquet")
    config = settings_file(tmp_path, ray={"num_actors": 2})
    done_counts = []
    with progress_listener(lambda totals: done_counts.append(totals.done)):
        first = nightly_campaign_render(str(manifest), store_url=tmp_store, config_file=config)
    assert first["rendered"] == 2 and first["versions"] == {"spring-launch": 1}
    assert done_counts[0] == 0 and 1 in done_counts and done_counts[-1] == 2, "the listener in scope sees each shot finish"

    heard = len(done_counts)
    state = backfill_variants("spring-launch", languages=["ja"], store_url=tmp_store, config_file=config, return_state=True)
    assert len(done_counts) == heard, "a run outside the block has no listener"
    result = state.result()
    assert result["rendered"] == 1 and result["cached"] == 0
    version = Store(tmp_store).versions.read("spring-launch", 2)
    assert sorted(e["variant"] for e in version["entries"]) == ["de-16x9-t1", "en-16x9-t1", "ja-16x9-t1"]
    assert all(e["status"] == "ok" for e in version["entries"])

    flow_run_id = str(state.state_details.flow_run_id)
    events = Store(tmp_store).lineage.read_events()
    shots = [e for e in events if e.job.name == "render_shot" and e.run.facets["parent"].run.runId == flow_run_id]
    assert len(shots) == 1 and shots[0].eventType.value == "COMPLETE", "one lineage run per rendered variant, under the flow run"
    [clip] = shots[0].outputs
    assert clip.facets["version"].datasetVersion == version["entries"][2]["sha256"], "output carries the clip's content hash"
    assert {i.name.rsplit("/", 1)[-1] for i in shots[0].inputs} >= {"tiny"}, "the model is an input"
    assert any(e.job.name == "backfill-variants" and e.run.runId == flow_run_id and e.eventType.value == "COMPLETE" for e in events)

    artifacts = artifacts_of(state.state_details.flow_run_id)
    assert artifacts["progress"].data == 100
    summary = artifacts["markdown"].data
    assert "spring-launch: version 2" in summary and "| 1 | 0 | 1 | 0 | 0 | 0 |" in summary
    assert "data:image/jpeg;base64," in summary, "the contact sheet is inlined in the summary"

    async def task_run_names():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return sorted(run.name.rsplit("-", 1)[0] for run in runs)

    assert asyncio.run(task_run_names()) == ["index-chunk-1", "plan-variants", "publish-version", "read-manifest", "report-run"]
    [ready] = log_messages(state.state_details.flow_run_id, "render pool ready")
    assert re.fullmatch(r"render pool ready in [\d.]+s: 2 actors on cpu, model loaded in [\d.]+s \(slowest actor\)", ready), ready


def horse_cli(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def test_broken_rows_are_reported_and_good_rows_render(prefect_api, ray_cluster, tmp_path, tmp_store):
    one_variant = {"languages": ["en"], "aspect_ratios": ["16:9"]}
    good = [shot(f"g{i}", f"Shot {i}: a bicycle bell rings in a quiet street.", **one_variant) for i in range(1, 6)]
    broken = [
        shot("b1", None, **one_variant),                                       # missing scene
        shot("b2", "A scene.", **{**one_variant, "languages": ["tlh"]}),       # unknown language
        shot("b3", "A scene.", **{**one_variant, "aspect_ratios": ["3:2"]}),   # bad aspect ratio
        shot("g1", "A duplicate of the first shot.", **one_variant),           # duplicate shot id
        shot("../etc", "A traversal attempt.", **one_variant),                 # traversal in an id
    ]
    manifest = write_manifest(good + broken, tmp_path / "mixed.parquet")
    # On the session's Ray cluster (a cluster of its own would cost the process ~7 CPU-s to start)
    config = settings_file(tmp_path, ray={"address": ray_cluster.address_info["gcs_address"]})
    result = horse_cli("render", str(manifest), "--json", "--store", tmp_store, "--config", config)
    assert "Traceback" not in result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert result.returncode == 1, "some rows were skipped"
    assert document["rendered"] == 5 and document["failed"] == 0
    errors = document["row_errors"]
    assert len(errors) == 5
    assert errors[0].startswith("row 6 (shot b1), column scene: is required")
    assert "row 7 (shot b2), column languages: unsupported language code 'tlh'" in errors[1]
    assert "row 8 (shot b3), column aspect_ratios: unknown aspect ratio '3:2'" in errors[2]
    assert "row 9 (shot g1), column shot_id: duplicate of row 1" in errors[3]
    assert "row 10 (shot ../etc), column shot_id: invalid shot_id '../etc'" in errors[4]
    assert sorted(e["shot_id"] for e in Store(tmp_store).versions.read("spring-launch")["entries"]) == ["g1", "g2", "g3", "g4", "g5"]


def test_failed_shots_are_published_as_failed_and_fail_the_run(prefect_api, ray_cluster, tmp_path, tmp_store):
    manifest = write_manifest([shot("s200", "A kettle whistles.", languages=["en"], aspect_ratios=["1:1"])], tmp_path / "f.parquet")
    # A deadline no render can meet: the pool kills the actor and, with no retries left, fails the shot.
    config = settings_file(tmp_path, ray={"job_deadline_s": 0.05, "max_retries": 0})
    state = nightly_campaign_render(str(manifest), store_url=tmp_store, config_file=config, return_state=True)
    assert state.is_failed()
    version = Store(tmp_store).versions.read("spring-launch", 1)
    assert [e["status"] for e in version["entries"]] == ["failed"]
    table = json.loads(artifacts_of(state.state_details.flow_run_id)["spring-launch-failures"].data)  # not the spend table
    assert table[0]["shot"] == "s200" and table[0]["variant"] == "en-1x1-t1"
    assert table[0]["error_class"] == "DeadlineExceeded"
    assert set(table[0]) == {"shot", "variant", "error_class", "message", "retryable", "attempts", "render_key"}


def test_killed_run_resumes_with_only_the_missing_shots(prefect_api, tmp_path, tmp_store):
    rows = [shot(f"k{i}", f"Shot {i}: rain on a tin roof.", languages=["en"], aspect_ratios=["16:9", "9:16"]) for i in range(1, 5)]
    manifest = write_manifest(rows, tmp_path / "k.parquet")
    config = settings_file(tmp_path, render={"chunk_size": 2})
    receipts = Path(tmp_store.removeprefix("file://")) / "receipts"
    process = subprocess.Popen([sys.executable, "-m", "flows.cli", "render", str(manifest), "--json", "--store", tmp_store, "--config", config],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=os.environ.copy())
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(receipts.rglob("*.json"))) < 3:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the flow process and the Ray cluster it started
    process.wait()
    done_before = len(list(receipts.rglob("*.json")))
    assert 3 <= done_before < 8, "the kill landed mid-run"

    result = horse_cli("render", str(manifest), "--json", "--store", tmp_store, "--config", config)
    document = json.loads(result.stdout)
    assert result.returncode == 0, result.stderr[-2000:]
    assert document["cached"] >= done_before and document["rendered"] == 8 - document["cached"]
    version = Store(tmp_store).versions.read("spring-launch")
    assert len(version["entries"]) == 8 and all(e["status"] == "ok" for e in version["entries"])
    assert len(list(receipts.rglob("*.json"))) == 8, "one receipt per render, none duplicated"


def test_prefect_server_from_configuration(prefect_api, ray_cluster, tmp_path, tmp_store):
    """`prefect.api_url` in the config file sends the run to that server (no PREFECT_API_URL set)."""
    manifest = write_manifest([shot("p1", "A paper boat.", languages=["en"], aspect_ratios=["1:1"])], tmp_path / "p.parquet")
    config = settings_file(tmp_path, prefect={"api_url": prefect_api}, ray={"address": ray_cluster.address_info["gcs_address"]})
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    result = subprocess.run([sys.executable, "-m", "flows.cli", "render", str(manifest), "--json", "--store", tmp_store,
                             "--config", config], capture_output=True, text=True, timeout=600, env=env)
    document = json.loads(result.stdout)
    assert result.returncode == 0 and document["rendered"] == 1

    async def read():
        async with get_client() as client:
            return await client.read_flow_run(document["run_id"])

    assert asyncio.run(read()).state.is_completed(), "the run is recorded in the configured server"
