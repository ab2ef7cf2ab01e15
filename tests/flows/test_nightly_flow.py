"""The nightly flow end to end: Prefect test server, local Ray, tiny model, real mp4s."""

from __future__ import annotations

import av
import pytest

from catalog import Store
from flows.manifest import write_manifest

from .conftest import shot


def render(manifest, settings):
    from flows.campaign_run import render_campaign
    from prefect import flow

    @flow(name="test-render")
    def wrapper():
        return render_campaign(str(manifest), settings).as_dict()

    return wrapper()


@pytest.mark.slow
def test_three_shots_two_languages_two_aspects(prefect_api, ray_cluster, manifest_path, settings, three_shots, tmp_path):
    first = render(manifest_path, settings)
    assert first["rendered"] == 12 and first["cached"] == 0 and first["failed"] == 0
    assert first["versions"] == {"spring-launch": 1}
    use = first["accelerator"]  # the actors' model busy share since their first shot, from the outcomes
    assert use["device_types"] == ["cpu"] and use["actors"] >= 1 and 0 < use["busy_s"] < use["wall_s"]

    store = Store(settings.store_url)
    version = store.versions.read("spring-launch", 1)
    assert len(version["entries"]) == 12
    for entry in version["entries"]:
        assert entry["status"] == "ok"
        with store.open_blob(entry["blob_uri"]) as f, av.open(f) as container:
            assert container.streams.video[0].frames > 0
            assert container.streams.audio

    second = render(manifest_path, settings)
    assert second["rendered"] == 0 and second["cached"] == 12
    assert second["accelerator"] is None, "nothing rendered: no accelerator share to report"
    assert second["versions"] == {"spring-launch": 2}
    v2 = store.versions.read("spring-launch", 2)
    assert [e["blob_uri"] for e in v2["entries"]] == [e["blob_uri"] for e in version["entries"]]

    changed = [dict(row) for row in three_shots]
    changed[1]["scene"] = "Close-up of a glass of iced tea sweating on a marble table."
    changed_path = write_manifest(changed, tmp_path / "spring-v2.parquet")
    third = render(changed_path, settings)
    assert third["rendered"] == 4 and third["cached"] == 8


@pytest.mark.slow
def test_a_shot_without_dialogue_renders_once_without_a_language(prefect_api, ray_cluster, settings, tmp_path):
    manifest = write_manifest([shot("b010", "Rain runs down a window at dusk.", dialogue=[], languages=[], aspect_ratios=["1:1"])],
                              tmp_path / "broll.parquet")
    result = render(manifest, settings)
    assert result["rendered"] == 1 and result["failed"] == 0 and not result["row_errors"]

    store = Store(settings.store_url)
    [entry] = store.versions.read("spring-launch", 1)["entries"]
    assert (entry["variant"], entry["language"], entry["status"]) == ("1x1-t1", None, "ok")
    assert store.read_receipt(entry["render_key"])["language"] is None
    assert store.index.existing([entry["render_key"]])[entry["render_key"]]["language"] is None
    with store.open_blob(entry["blob_uri"]) as f, av.open(f) as container:
        assert container.metadata["horse_variant"] == "1x1-t1" and "language" not in container.metadata
