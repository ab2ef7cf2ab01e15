"""`horse adapter train` the way a user runs it: a fresh process on the session Ray cluster and
Prefect server, killed mid-run once its first checkpoint is in the store, then run again: it
resumes from that checkpoint, exits 0 and registers a new
adapter version with lineage to its clips and a loss curve artifact. Bad input exits 2 with one
line naming the field, before Prefect or Ray start."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from catalog import Store
from flows.report import artifact_key
from tests.actors.test_adapter_training import write_brand_clips
from tests.cli.cli_testlib import config_file, horse, horse_in_process, one_json_document

STEPS, EVERY = 12, 2


def test_bad_input_exits_2_naming_the_field(tmp_path):
    missing = horse_in_process("adapter", "train", "teal", "--clips", str(tmp_path / "nowhere"), "--store", tmp_path.as_uri())
    assert missing.returncode == 2 and missing.stdout == ""
    (line,) = missing.stderr.strip().splitlines()
    assert line.startswith("error: --clips ") and "nowhere" in line

    (tmp_path / "clips").mkdir()
    bad_brand = horse_in_process("adapter", "train", "Teal Brand!", "--clips", str(tmp_path / "clips"), "--store", tmp_path.as_uri())
    assert bad_brand.returncode == 2 and bad_brand.stdout == ""
    (line,) = bad_brand.stderr.strip().splitlines()
    assert line.startswith("error: invalid brand 'Teal Brand!': must match ^[a-z0-9][a-z0-9._-]{0,63}$")


def _checkpointed_step(store_root) -> int | None:
    """The step of the latest checkpoint Ray Train registered for any run in the store."""
    for snapshot in store_root.glob("training/*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if latest:
            return latest["metrics"]["step"]
    return None


def _loss_artifacts(flow_run_id: str):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    return [a for a in asyncio.run(read()) if a.key == artifact_key("teal", "adapter-loss")]


@pytest.mark.slow
def test_killed_training_resumes_from_its_checkpoint_and_registers(prefect_api, ray_cluster, tmp_path):
    clips = write_brand_clips(tmp_path / "clips")
    root = tmp_path / "store"
    args = ["adapter", "train", "teal", "--clips", str(tmp_path / "clips"), "--steps", str(STEPS),
            "--checkpoint-every", str(EVERY), "--rank", "2", "--alpha", "2", "--workers", "1", "--json",
            "--store", root.as_uri(), "--config", config_file(tmp_path),
            "--ray-address", ray_cluster.address_info["gcs_address"]]

    first = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while (killed_at := _checkpointed_step(root)) is None and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "training ended before it could be killed"
        os.killpg(first.pid, signal.SIGKILL)        # the driver and anything it started, mid-run
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert killed_at is not None and killed_at < STEPS
    store = Store(root.as_uri())
    assert store.adapters.versions("teal") == []

    second = horse(*args, timeout=600)
    document = one_json_document(second)
    assert second.returncode == 0 and document["ok"], second.stderr[-3000:]
    (resumed,) = document["resumed_from"]
    assert killed_at <= resumed < STEPS                      # from the last checkpoint, not from scratch
    with store.open_blob(document["history_uri"], "json") as f:
        history = json.load(f)["history"]
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))

    # a new registry version with lineage to its clips (by content) and their stored encodings
    (record,) = store.adapters.versions("teal")
    assert record["version"] == 1 and record["name"] == document["name"] == "teal@1"
    trained_on = record["training"]["clips"]
    assert [c["sha256"] for c in trained_on] == [c.sha256 for c in clips]
    assert [c["caption"] for c in trained_on] == [c.caption for c in clips]
    (event,) = root.glob(f"lineage/*/{record['run_id']}-COMPLETE*.json")
    body = json.loads(event.read_text())
    versions = {io: {d["facets"]["version"]["datasetVersion"] for d in body[io]} for io in ("inputs", "outputs")}
    assert {c["sha256"] for c in trained_on} <= versions["inputs"] and versions["outputs"] == {record["sha256"]}
    # the clip encodings are stage results in the store (their reuse: tests/actors/test_adapter_training.py)
    encodings = [r for r in store.stage_results.records() if r.stage == "encoding"]
    assert {c["encoding_uri"] for c in trained_on} == {r.blob_uri for r in encodings} and len(encodings) == 3
    assert document["checkpoints"].startswith(root.as_uri() + "/training/teal-")

    (artifact,) = _loss_artifacts(record["run_id"])
    assert artifact.type == "image" and artifact.data.startswith("data:image/png;base64,")
