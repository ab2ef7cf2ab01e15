"""Review end to end (tiny model, session Ray cluster and Prefect test server, local store): the
preview flow pauses with the review form; the form is submitted the way the UI does it (POST
/flow_runs/{id}/resume with run_input); the approved preview is promoted with its social master
and delivered; a rerun with a changed scene and a new model checkpoint keeps the approved clip
byte-identical; GC keeps every approved file; a review nobody answers ends the run cleanly, open."""

from __future__ import annotations

import hashlib
import threading
import time

import httpx
import opentimelineio as otio
import pytest

from catalog import Store
from flows.deliver import deliver
from flows.manifest import write_manifest
from model import HappyHorsePipeline

from .conftest import shot

pytestmark = pytest.mark.slow
CAMPAIGN = "spring-launch"


def paused_run(api: str, flow_name: str, deadline_s: float = 600) -> str:
    give_up = time.monotonic() + deadline_s
    while time.monotonic() < give_up:
        runs = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}},
                                                            "flows": {"name": {"any_": [flow_name]}}}).json()
        if runs:
            return runs[0]["id"]
        time.sleep(1)
    raise AssertionError(f"no paused {flow_name} run")


def resume(api: str, run_id: str, run_input: dict) -> httpx.Response:
    """The call the UI's form makes; the test server's SQLite can be briefly locked on a busy
    machine (a 500), and the UI's user would press Submit again."""
    for _ in range(5):
        response = httpx.post(f"{api}/flow_runs/{run_id}/resume", json={"run_input": run_input}, timeout=60)
        if response.status_code < 500:
            return response
        time.sleep(2)
    return response


def blob_sha(store: Store, uri: str) -> str:
    with store.open_blob(uri) as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_review_in_the_ui_promotes_delivers_and_pins(prefect_api, ray_cluster, tmp_path, tmp_store):
    from flows.nightly import nightly_campaign_render
    from flows.review import review_campaign

    config = tmp_path / "horse.yaml"
    config.write_text(f"store_url: {tmp_store}\nray: {{cpu_mode: true, num_actors: 1, job_deadline_s: 300}}\n"
                      "render: {destinations: [social]}\nreview: {poll_seconds: 1}\n")
    row = dict(languages=["en"], aspect_ratios=["16:9"], resolution="540p", takes=2)
    manifest = write_manifest([shot("h100", "A horse trots along a beach at dawn.", **row)], tmp_path / "m1.parquet")
    store = Store(tmp_store)

    result = {}
    run = threading.Thread(target=lambda: result.update(nightly_campaign_render(
        str(manifest), config_file=str(config), preview=True, review=True, promote_to="540p", review_timeout_s=900)))
    run.start()
    run_id = paused_run(prefect_api, "nightly-campaign-render")
    schema = httpx.post(f"{prefect_api}/flow_runs/{run_id}/input/filter", json={"prefix": "paused"}).json()
    assert any(i["key"].endswith("schema") for i in schema), "the paused run offers the form's schema to the UI"
    resumed = resume(prefect_api, run_id, {"reviewer": "dana", "s0": "approve t2", "s0_note": "the light is right"})
    assert resumed.json()["status"] == "ACCEPT", resumed.text
    run.join(timeout=900)

    review = result["review"][CAMPAIGN]
    assert review["status"] == "decided" and review["promoted"] == ["en-16x9-t2"]
    approved = store.approved_entries(CAMPAIGN)[("h100", "en-16x9-t2")]
    assert approved["role"] == "promoted" and approved["resolution"] == "540p"
    assert approved["approval"]["who"] == "dana"
    assert [e["source"] for e in store.approvals.events(CAMPAIGN)] == ["prefect-ui", "promote"]
    master = approved["qc"]["social"]["master_uri"]

    delivered = deliver(store, CAMPAIGN, "social", str(tmp_path / "out"))
    assert delivered.copied == ["h100_en_16x9_t2.mp4"]
    qc_failed = [name for name, c in approved["qc"]["social"]["checks"].items() if not c["passed"]]
    assert delivered.qc_failed == ({"h100_en_16x9_t2.mp4": sorted(qc_failed)} if qc_failed else {})
    clips = list(otio.adapters.read_from_file(f"{delivered.folder}/{CAMPAIGN}_social_en_16x9.otio").find_clips())
    assert [(c.name, c.metadata["horse"]["sha256"]) for c in clips] == [("h100_en_16x9_t2", blob_sha(store, master))]

    # a changed scene and another checkpoint: the previews render again, the approved clip stays
    checkpoint = tmp_path / "ckpt"
    HappyHorsePipeline.tiny(seed=3).save_pretrained(checkpoint)
    changed = write_manifest([shot("h100", "A horse gallops through surf at dusk.", **row)], tmp_path / "m2.parquet")
    rerun = nightly_campaign_render(str(changed), config_file=str(config), model=str(checkpoint), preview=True)
    assert (rerun["rendered"], rerun["kept_approved"]) == (2, 1)
    latest = {e["variant"]: e for e in store.versions.read(CAMPAIGN)["entries"]}
    assert latest["en-16x9-t2"]["sha256"] == approved["sha256"] == blob_sha(store, approved["blob_uri"])
    assert latest["en-16x9-t2-preview"]["render_key"] != approved["promoted_from"]["render_key"]

    store.gc(grace=0, dry_run=False)
    for uri in (approved["blob_uri"], master, approved["poster_uri"]):
        assert blob_sha(store, uri)  # still there

    unanswered = review_campaign(CAMPAIGN, timeout_s=2, config_file=str(config), return_state=True)
    assert unanswered.is_completed() and unanswered.result()["status"] == "open"
