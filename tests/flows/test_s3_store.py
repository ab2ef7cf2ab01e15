"""The nightly flow into an S3 store (moto's server on 127.0.0.1): blobs, index, versions and
lineage all on S3, and the credentials never handed to Ray."""

from __future__ import annotations

import av
import pytest
import s3fs

from catalog import Store, public_options
from flows.render_stream import pool_config
from flows.manifest import write_manifest
from flows.nightly import nightly_campaign_render
from flows.settings import load_settings

from .conftest import shot

pytestmark = pytest.mark.slow


def test_credentials_are_not_pool_arguments(s3_server):
    options = {**s3_server["storage_options"], "token": "session-token"}
    config = pool_config(load_settings(store_url="s3://horse-test/x", storage_options=options))
    assert config.storage_options == {"client_kwargs": s3_server["storage_options"]["client_kwargs"]}
    assert public_options(options).keys() == {"client_kwargs"}


def test_nightly_flow_on_s3(prefect_api, ray_cluster, s3_server, tmp_path):
    url = f"s3://{s3_server['bucket']}/nightly-{tmp_path.name}"
    config = tmp_path / "horse.yaml"
    config.write_text(f"store_url: {url}\nray: {{cpu_mode: true, num_actors: 2}}\n"
                      f"storage_options: {{client_kwargs: {{endpoint_url: '{s3_server['endpoint_url']}', region_name: us-east-1}}}}\n")
    manifest = write_manifest([shot("s400", "A tram passes in the rain.", aspect_ratios=["16:9"])], tmp_path / "s3.parquet")
    result = nightly_campaign_render(str(manifest), config_file=str(config))
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
