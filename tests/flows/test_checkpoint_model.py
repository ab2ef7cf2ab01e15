"""A checkpoint folder in the released layout, made by the test, rendered through the nightly flow:
the real loading path (sharded safetensors, strict checks, fingerprint) end to end."""

from __future__ import annotations

import json

import av
import pytest

from catalog import Store
from flows.manifest import write_manifest
from flows.nightly import nightly_campaign_render
from model import HappyHorsePipeline, describe_checkpoint

from .conftest import shot

pytestmark = pytest.mark.slow


def test_nightly_flow_renders_with_a_checkpoint_folder(prefect_api, ray_cluster, tmp_path, tmp_store):
    checkpoint = tmp_path / "happyhorse-tiny"
    HappyHorsePipeline.tiny(seed=3).save_pretrained(checkpoint)
    fingerprint = describe_checkpoint(checkpoint).fingerprint
    config = tmp_path / "horse.yaml"
    config.write_text(f"model: {checkpoint}\nray: {{cpu_mode: true, num_actors: 1}}\n")
    manifest = write_manifest([shot("s300", "A lighthouse at dusk.", languages=["ja"], aspect_ratios=["4:5"])], tmp_path / "c.parquet")

    state = nightly_campaign_render(str(manifest), store_url=tmp_store, config_file=str(config), return_state=True)
    result = state.result()
    assert result["rendered"] == 1, result

    store = Store(tmp_store)
    version = store.versions.read("spring-launch")
    assert version["model_fingerprint"] == fingerprint
    [entry] = version["entries"]
    with store.open_blob(entry["blob_uri"]) as f, av.open(f) as container:
        assert container.metadata["horse_model_fingerprint"] == fingerprint
        video = container.streams.video[0]
        assert (video.width, video.height) == describe_checkpoint(checkpoint).size_for("256p", "4:5")
    assert store.read_receipt(entry["render_key"])["model_fingerprint"] == fingerprint
    assert json.loads(store.read_receipt(entry["render_key"])["timings"])["denoise"] > 0
