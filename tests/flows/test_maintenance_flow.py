"""`horse maintain` runs the catalog-maintenance flow; the maintenance deployment follows the settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from catalog import Store, render_key

pytestmark = pytest.mark.slow


def horse(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ))


def receipt(store: Store, shot: str) -> dict:
    blob = store.put_blob(f"clip {shot}".encode())
    return {"render_key": render_key({"shot": shot}), "campaign_id": "autumn", "shot_id": shot, "variant": "en-16x9-t1",
            "status": "ok", "blob_uri": blob.uri, "sha256": blob.sha256}


def test_horse_maintain_dry_run_then_run(prefect_api, tmp_path, tmp_store):
    store = Store(tmp_store)
    for shot in ("s1", "s2", "s3"):
        store.index.commit([receipt(store, shot)])  # one small file per commit
    orphan = store.put_blob(b"referenced by nothing")
    config = tmp_path / "studio.yaml"
    config.write_text("maintenance: {vacuum_retention_hours: 0, gc_grace_hours: 0}\n")
    args = ("maintain", "--config", str(config), "--store", tmp_store, "--json")

    dry = horse(*args, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    report = json.loads(dry.stdout)
    index = report["tables"][0]
    assert report["dry_run"] and index["table"] == "index/renders" and index["compacted_files"] == 3
    assert report["gc"]["deleted_uris"] == [orphan.uri] and store.blob_exists(orphan.sha256)
    assert store.index.table.files().num_rows == 3, "a dry run changes nothing"

    done = horse(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert not report["dry_run"] and report["tables"][0]["files_after"] == 1
    assert store.index.table.files().num_rows == 1 and not store.blob_exists(orphan.sha256)
    assert len(store.index.existing_keys([render_key({"shot": s}) for s in ("s1", "s2", "s3")], campaigns=["autumn"])) == 3

    shown = horse("maintain", "--config", str(config), "--store", tmp_store, "--dry-run")
    assert shown.returncode == 0 and "catalog maintenance (dry run)" in shown.stdout and "would be deleted" in shown.stdout


def test_maintenance_deployment_follows_the_settings(tmp_path):
    from flows.deploy import build_maintenance_deployment
    from flows.settings import load_settings

    config = tmp_path / "studio.yaml"
    config.write_text("schedule: {timezone: America/Los_Angeles}\nmaintenance: {cron: '15 12 * * 1-5'}\n")
    deployment = build_maintenance_deployment(load_settings(config, store_url="s3://studio/horse"), str(config))
    [schedule] = deployment.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("15 12 * * 1-5", "America/Los_Angeles")
    assert deployment.parameters == {"store_url": "s3://studio/horse", "config_file": str(config)}
    assert deployment.concurrency_limit == 1
