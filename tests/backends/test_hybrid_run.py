"""One campaign run, hero shots routed to Seedance (the local ModelArk server) and the rest to the
local tiny model: one version, lineage naming the provider and model id, the provider actor
killed while its tasks run without a second task being paid for, the provider's usage in the
spend table, and the key found nowhere. And the run's recogniser reaches the provider actor, whose
dialogue gate hears its clips."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import threading
import time
from pathlib import Path

import pytest
import ray
from backends_testlib import ARK_KEY, fast_spec
from prefect import flow, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
from test_api_backend import SAID, heard_job

from catalog import Store
from flows.campaign_run import render_campaign
from flows.manifest import write_manifest
from flows.settings import load_settings
from horse_actors import ModelSpec, PoolConfig, RenderPool, Scheduling, SpeechSpec, StoreTarget
from horse_actors.api_actor import ProviderActors, run_routed
from media import probe_mp4

pytestmark = pytest.mark.slow
MODEL_ID = "dreamina-seedance-2-0-260128"


def row(shot_id: str, **overrides) -> dict:
    return {"campaign_id": "launch", "shot_id": shot_id, "scene": f"Shot {shot_id}: tea steams on a sill.",
            "dialogue": [{"speaker": "host", "language": "en", "line": "Spring tea is here."}], "languages": ["en"],
            "aspect_ratios": ["16:9"], "resolution": "256p", "duration_s": 1.0, "takes": 1, "seed": 7, **overrides}


@flow(name="hybrid-render")
def hybrid_render(manifest: str, settings) -> dict:
    return render_campaign(manifest, settings).as_dict()


def kill_the_provider_actor_while_its_tasks_run(modelark, killed: list) -> None:
    """Once both hero tasks are running at the provider: kill the Seedance actor, then let the
    provider finish them."""
    end = time.monotonic() + 300
    while time.monotonic() < end:
        tasks = list(modelark.tasks.values())
        if len(tasks) == 2 and all(t.status == "running" and t.polls >= 3 for t in tasks):
            break
        time.sleep(0.05)
    else:
        modelark.release()
        return
    [name] = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
              if a["name"].startswith("horse-api-seedance-2.0-")]
    ray.kill(ray.get_actor(name))
    killed.append(name)
    time.sleep(0.5)
    modelark.release()


def prefect_records(flow_run_id):
    async def read():
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            artifacts = await client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return run, logs, artifacts

    return asyncio.run(read())


def prefect_texts(flow_run_id) -> list[str]:
    run, logs, artifacts = prefect_records(flow_run_id)
    return [repr(run.parameters)] + [log.message for log in logs] + [f"{a.key} {a.description} {a.data}" for a in artifacts]


def spend_artifact(flow_run_id) -> list[dict]:
    [artifact] = [a for a in prefect_records(flow_run_id)[2] if a.key and a.key.endswith("-spend")]
    return json.loads(artifact.data)


def test_hero_shots_on_seedance_and_the_rest_local_in_one_version(prefect_api, ray_cluster, modelark, tmp_store,
                                                                   tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    fast = {"base_url": modelark.base_url, "poll_initial_s": 0.02, "poll_max_s": 0.05, "retry_initial_s": 0.01,
            "retry_max_s": 0.05, "max_wait_s": 300}
    settings = load_settings(store_url=tmp_store, ray={"cpu_mode": True, "num_actors": 1, "job_deadline_s": 300},
                             routing={"rules": [{"tag": "hero", "backend": "seedance-2.0"}],
                                      "providers": {"seedance-2.0": fast}})
    manifest = str(write_manifest([row("h1", tags=["hero"]), row("l1"), row("h2", tags=["hero", "dusk"]), row("l2")],
                                  tmp_path / "launch.parquet"))
    sent_to_ray = []  # the provider actors' constructor arguments (ProviderActors.__init__) and their jobs
    real_init, real_run = ProviderActors.__init__, ProviderActors.run

    def recording_init(self, providers, store, scheduling, **more):
        sent_to_ray.append((providers, store, more))
        real_init(self, providers, store, scheduling, **more)

    def recording_run(self, jobs, *args):
        sent_to_ray.append(jobs)
        return real_run(self, jobs, *args)

    monkeypatch.setattr(ProviderActors, "__init__", recording_init)
    monkeypatch.setattr(ProviderActors, "run", recording_run)
    modelark.hold = True
    killed: list[str] = []
    killer = threading.Thread(target=kill_the_provider_actor_while_its_tasks_run, args=(modelark, killed))
    killer.start()
    try:
        first = hybrid_render(manifest, settings)
    finally:
        modelark.release()
        killer.join()

    assert killed, "the provider actor was killed while its tasks ran"
    assert (first["rendered"], first["failed"], first["versions"]) == (4, 0, {"launch": 1})
    assert modelark.creates == 2, "the retry after the actor died polled the recorded tasks"
    store = Store(tmp_store)
    entries = {e["shot_id"]: e for e in store.versions.read("launch", 1)["entries"]}
    assert {s: (e["status"], e.get("backend"), e.get("provider_model")) for s, e in entries.items()} == {
        "h1": ("ok", "seedance-2.0", MODEL_ID), "h2": ("ok", "seedance-2.0", MODEL_ID),
        "l1": ("ok", None, None), "l2": ("ok", None, None)}
    # No recogniser in this run: every line, the provider clips' too, is on record as unchecked, never passed.
    assert {s: e.get("dialogue_status") for s, e in entries.items()} == dict.fromkeys(entries, "unchecked")
    for shot in ("h1", "h2"):
        receipt = store.read_receipt(entries[shot]["render_key"])
        extra = json.loads(receipt["extra"])
        [task] = store.provider_tasks.tasks(entries[shot]["render_key"])
        assert extra["provider_task_id"] == task["task_id"] and task["status"] == "succeeded"
        assert extra["usage"]["total_tokens"] > 0 and receipt["attempt"] == 2  # attempt 1 died with its actor
        assert receipt["model_fingerprint"] == f"seedance-2.0:{MODEL_ID}" and receipt["gpu_seconds"] is None
        assert receipt["dialogue_status"] == "unchecked", "the provider actor's gate record, as a local clip's"
        path = tmp_path / f"{shot}.mp4"
        with store.open_blob(entries[shot]["blob_uri"]) as src:
            path.write_bytes(src.read())
        assert (probe_mp4(path).width, probe_mp4(path).height) == (854, 480)
    [billed] = [r for r in store.spend.to_arrow(run_id=first["run_id"]).to_pylist() if r["device_type"].startswith("api:")]
    assert (billed["campaign_id"], billed["device_type"], billed["renders"], billed["gpu_seconds"]) == (
        "launch", "api:seedance-2.0", 2, 0.0), "the spend table shows what the provider billed: 2 clips, 1 task each"
    costs = [json.loads(store.read_receipt(entries[s]["render_key"])["extra"]).get("cost_usd") for s in ("h1", "h2")]
    assert billed["money"] == (None if None in costs else round(sum(costs), 4))
    # the local server bills Seedance's formula, W x H x 24 fps x s / 1024, for a 4 s 854x480 clip
    tokens = round(854 * 480 * 24 * 4 / 1024)
    usages = [json.loads(store.read_receipt(entries[s]["render_key"])["extra"])["usage"] for s in ("h1", "h2")]
    assert [u["total_tokens"] for u in usages] == [tokens, tokens], "each clip's usage is in its receipt"
    assert (billed["usage_tokens"], billed["estimated_tokens"]) == (2 * tokens, None), "the provider's usage, summed"
    [shown] = [r for r in spend_artifact(first["run_id"]) if r["device_type"] == "api:seedance-2.0"]
    assert (shown["renders"], shown["usage_tokens"], shown["money"]) == (2, 2 * tokens, billed["money"])
    root = Path(tmp_store.removeprefix("file://"))
    events = [json.loads(p.read_text()) for p in root.glob("lineage/*/*.json")]
    models = sorted(sorted(d["name"] for d in e["inputs"] if "/blobs/" not in d["name"])
                    for e in events if e["job"]["name"] == "render_shot" and e["eventType"] == "COMPLETE")
    assert [m[-1] for m in models] == ["model/tiny"] * 2 + [f"provider/seedance-2.0/{MODEL_ID}"] * 2, models

    again = hybrid_render(manifest, settings)
    assert (again["rendered"], again["cached"]) == (0, 4) and modelark.creates == 2

    session_logs = Path(ray_cluster.address_info["session_dir"]) / "logs"
    places = {"driver log": caplog.text.encode(), "Ray arguments": pickle.dumps(sent_to_ray),
              **{str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()},
              **{str(p): p.read_bytes() for p in session_logs.rglob("*") if p.is_file()},
              **{f"Prefect: {t[:60]}": t.encode() for run in (first, again) for t in prefect_texts(run["run_id"])}}
    assert sent_to_ray and any(b"seedance" in data for data in places.values())
    assert any(p.startswith("Prefect: ") for p in places) and any("worker" in p for p in places)
    assert not [place for place, data in places.items() if ARK_KEY.encode() in data]


def test_the_runs_recogniser_reaches_the_provider_actor_which_hears_its_clips(ray_cluster, modelark, tmp_store, speak):
    spec = fast_spec("seedance-2.0", modelark)
    modelark.speech = speak(SAID)
    # the pool's configuration as a run builds it (flows.render_stream.pool_config); no local job: no render actor
    config = PoolConfig(ModelSpec("none", speech=SpeechSpec("pocketsphinx")), StoreTarget(tmp_store),
                        Scheduling(poll_s=0.05))
    outcomes = []
    run_routed(RenderPool(config), [heard_job(spec, seed=1)], outcomes.append, None, {spec.name: spec})

    [outcome] = outcomes
    assert (outcome.status, outcome.dialogue_status) == ("ok", "passed"), outcome.error_message or outcome.dialogue
    assert outcome.dialogue["recognizer"] == "pocketsphinx" and modelark.creates == 1
