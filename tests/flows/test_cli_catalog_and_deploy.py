"""`horse versions`, `horse show` and `horse deploy` against real stores and the Prefect test server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys

from prefect import get_client

from catalog import Store


def horse(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def publish(store: Store, contents: list[bytes]) -> int:
    entries = []
    for i, data in enumerate(contents):
        blob = store.put_blob(data)
        entries.append({"shot_id": f"s{i}", "variant": "en-16x9-t1", "render_key": hashlib.sha256(data).hexdigest(),
                        "status": "ok", "blob_uri": blob.uri, "sha256": blob.sha256})
    return store.versions.publish("autumn", entries, run_id="r1")


def test_versions_and_show(tmp_store):
    store = Store(tmp_store)
    publish(store, [b"one", b"two"])
    publish(store, [b"one", b"two changed"])
    listed = horse("versions", "autumn", "--store", tmp_store, "--json")
    assert listed.returncode == 0
    assert [v["version"] for v in json.loads(listed.stdout)["versions"]] == [1, 2]
    first = json.loads(horse("show", "autumn", "--version", "1", "--store", tmp_store, "--json").stdout)
    latest = json.loads(horse("show", "autumn", "--store", tmp_store, "--json").stdout)
    assert first["version"] == 1 and latest["version"] == 2
    assert first["entries"][1]["blob_uri"] != latest["entries"][1]["blob_uri"]
    table = horse("show", "autumn", "--store", tmp_store)
    assert "s1" in table.stdout and "en-16x9-t1" in table.stdout

    missing = horse("versions", "no-such-campaign", "--store", tmp_store)
    assert missing.returncode == 2 and "has no published versions" in missing.stderr
    bad = horse("show", "../etc", "--store", tmp_store, "--json")
    assert bad.returncode == 2 and "invalid campaign_id" in json.loads(bad.stdout)["error"]


def test_deploy_registers_nightly_backfill_and_promote(prefect_api, tmp_path, tmp_store):
    config = tmp_path / "studio.yaml"
    config.write_text("schedule: {cron: '15 2 * * *', timezone: America/Los_Angeles, manifest_uri: s3://briefs/nightly.parquet}\n"
                      "prefect: {work_pool: horse-test-pool}\n")
    result = horse("deploy", "--config", str(config), "--store", tmp_store, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert set(json.loads(result.stdout)["deployments"]) == {"nightly", "backfill", "promote"}

    async def read():
        async with get_client() as client:
            return (await client.read_deployment_by_name("nightly-campaign-render/nightly"),
                    await client.read_deployment_by_name("backfill-variants/backfill"),
                    await client.read_deployment_by_name("promote-takes/promote"),
                    await client.read_work_pool("horse-test-pool"))

    nightly, backfill, promote, pool = asyncio.run(read())
    assert pool.type == "process" and pool.concurrency_limit == 1, "deploy created the work pool"
    [schedule] = nightly.schedules
    assert schedule.schedule.cron == "15 2 * * *" and schedule.schedule.timezone == "America/Los_Angeles"
    assert nightly.parameters["manifest_uri"] == "s3://briefs/nightly.parquet"
    assert nightly.parameters["store_url"] == tmp_store
    assert nightly.work_pool_name == backfill.work_pool_name == "horse-test-pool"
    for deployment in (nightly, backfill, promote):
        assert deployment.global_concurrency_limit.limit == 1, "one run owns the GPUs at a time"
    assert not backfill.schedules
    # promote runs on demand with parameters: the campaign, the tier, which shots and variants
    assert not promote.schedules and promote.work_pool_name == "horse-test-pool"
    assert promote.parameters["store_url"] == tmp_store
    assert {"campaign_id", "to", "shot_ids", "variants"} <= set(promote.parameter_openapi_schema["properties"])
    assert set(promote.parameter_openapi_schema["required"]) == {"campaign_id", "to"}
