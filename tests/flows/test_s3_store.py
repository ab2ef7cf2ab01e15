"""The nightly flow into an S3 store (moto's server on 127.0.0.1): blobs, index, versions and
lineage all on S3, and the credentials never handed to Ray, logged, stored or shown in Prefect."""

from __future__ import annotations

import asyncio
import logging
import pickle

import av
import pytest
import s3fs
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

from catalog import Store, public_options
from flows.render_stream import pool_config
from flows.manifest import write_manifest
from flows.nightly import nightly_campaign_render
from flows.settings import load_settings
from horse_actors import RenderPool

from .conftest import shot

pytestmark = pytest.mark.slow

# s3fs takes credentials inside client_kwargs as well as at the top level.
NESTED_SECRETS = {"aws_access_key_id": "planted-nested-key-id", "aws_secret_access_key": "planted-nested-secret",
                  "aws_session_token": "planted-nested-session-token"}


def test_credentials_are_not_pool_arguments(s3_server):
    options = {**s3_server["storage_options"], "token": "session-token"}
    options["client_kwargs"] = {**options["client_kwargs"], **NESTED_SECRETS}
    config = pool_config(load_settings(store_url="s3://horse-test/x", storage_options=options))
    assert config.store.options == {"client_kwargs": s3_server["storage_options"]["client_kwargs"]}
    assert public_options(options).keys() == {"client_kwargs"}


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(f"{record.name}: {record.getMessage()}")


def _prefect_texts(flow_run_id) -> list[str]:
    """What the Prefect server shows of a flow run: parameters, logs, artifacts."""
    async def read():
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            artifacts = await client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return run, logs, artifacts

    run, logs, artifacts = asyncio.run(read())
    assert logs and artifacts, "expected Prefect logs and artifacts to check"
    return [repr(run.parameters)] + [log.message for log in logs] + [f"{a.key} {a.description} {a.data}" for a in artifacts]


def test_nightly_flow_on_s3(prefect_api, ray_cluster, s3_server, tmp_path, monkeypatch):
    """Credentials planted in the storage options (nested in client_kwargs) and in the environment
    reach none of: Ray actor arguments, logs, receipts, versions, lineage, Delta commit logs,
    the Prefect server (parameters, logs, artifacts)."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", "planted-environment-session-token")
    secrets = [*NESTED_SECRETS.values(), "planted-environment-session-token",
               s3_server["storage_options"]["key"], s3_server["storage_options"]["secret"]]  # the AWS_* of the environment
    url = f"s3://{s3_server['bucket']}/nightly-{tmp_path.name}"
    config = tmp_path / "horse.yaml"
    config.write_text(f"store_url: {url}\nray: {{cpu_mode: true, num_actors: 1}}\n"
                      f"storage_options: {{client_kwargs: {{endpoint_url: '{s3_server['endpoint_url']}', region_name: us-east-1, "
                      + ", ".join(f"{k}: {v}" for k, v in NESTED_SECRETS.items()) + "}}\n")
    manifest = write_manifest([shot("s400", "A tram passes in the rain.", aspect_ratios=["16:9"])], tmp_path / "s3.parquet")
    pool_configs = []
    start_pool = RenderPool.__init__

    def record_config(self, config, *args, **kwargs):
        pool_configs.append(config)
        start_pool(self, config, *args, **kwargs)

    monkeypatch.setattr(RenderPool, "__init__", record_config)
    records, root = _Records(), logging.getLogger()
    level = root.level
    root.addHandler(records)
    root.setLevel(logging.DEBUG)
    try:
        state = nightly_campaign_render(str(manifest), config_file=str(config), return_state=True)
    finally:
        root.removeHandler(records)
        root.setLevel(level)
    result = state.result()
    assert result["rendered"] == 2

    store = Store(url, s3_server["storage_options"])
    version = store.versions.read("spring-launch", 1)
    assert all(e["blob_uri"].startswith(url + "/blobs/sha256/") for e in version["entries"])
    with store.open_blob(version["entries"][0]["blob_uri"]) as f, av.open(f) as container:
        assert container.streams.video[0].frames > 0
    assert set(store.index.existing([e["render_key"] for e in version["entries"]])) == {e["render_key"] for e in version["entries"]}
    fs = s3fs.S3FileSystem(**s3_server["storage_options"])
    fs.invalidate_cache()
    assert fs.find(f"{url}/lineage"), "lineage events are in the store"
    for path in fs.find(url):
        assert b"horse-test-secret" not in fs.cat(path), f"a credential leaked into {path}"

    [pool_config_used] = pool_configs
    assert pool_config_used.store.options == {"client_kwargs": {"endpoint_url": s3_server["endpoint_url"], "region_name": "us-east-1"}}
    stored = {path: fs.cat(path) for path in fs.find(url)}  # receipts, versions, lineage, Delta logs and data
    assert any("_delta_log" in p for p in stored) and any("/receipts/" in p for p in stored)
    assert len(records.messages) > 100, "expected log records to check"
    places = {"Ray actor arguments": pickle.dumps(pool_config_used), **{p: data for p, data in stored.items()},
              **{f"log: {m[:80]}": m.encode() for m in records.messages},
              **{f"Prefect: {t[:80]}": t.encode() for t in _prefect_texts(state.state_details.flow_run_id)}}
    leaks = {(place, secret) for place, data in places.items() for secret in secrets if secret.encode() in data}
    assert not leaks, leaks
