"""A render the OOM ladder could only finish at a lower tier is published as what it is.

End to end through the flow: the out-of-memory error is raised inside the pipeline, at the
1080p SR stage itself, by the test actor (tests/actors/faulty_actor.py). The clip is delivered
at 540p and recorded as `degraded` in the receipt, the index and the version; it is never cached
under the 1080p render key, so a later run renders the 1080p clip it was asked for.
"""

from __future__ import annotations

import json

import pytest

from catalog import Store
from flows.manifest import read_manifest, write_manifest
from flows.plan import make_plan, model_info
from horse_actors import RenderPool

from ..actors.faulty_actor import FaultyRenderActor
from .conftest import shot

pytestmark = pytest.mark.slow


def test_an_sr_stage_oom_publishes_a_degraded_clip_never_cached_under_the_1080p_key(
        prefect_api, ray_cluster, settings, tmp_path, monkeypatch):
    import flows.campaign_run
    from flows.campaign_run import RunFailed, render_campaign
    from prefect import flow

    manifest = write_manifest([shot("h010", "A horse gallops along a beach at dawn.", languages=["en"],
                                    aspect_ratios=["16:9"], resolution="1080p")], tmp_path / "hero.parquet")
    store = Store(settings.store_url)
    [job] = make_plan(read_manifest(str(manifest)).shots, model_info(settings), store).jobs
    faulty = FaultyRenderActor.planned(oom_at={job.render_key: {"1080p_sr"}})
    monkeypatch.setattr(flows.campaign_run, "RenderPool", lambda config: RenderPool(config, actor_class=faulty))

    @flow(name="test-degraded")
    def run():
        return render_campaign(str(manifest), settings).as_dict()

    with pytest.raises(RunFailed, match="1 of 1 shots failed or were degraded"):
        run()

    receipt = store.read_receipt(job.render_key)
    assert (receipt["status"], receipt["resolution"], receipt["rendered_resolution"]) == ("degraded", "1080p", "540p")
    assert receipt["fallback"] == "tiled_decode+lower_sr"
    assert (receipt["width"], receipt["height"]) == store_size(settings, "540p")
    [entry] = store.versions.read("spring-launch", 1)["entries"]
    assert (entry["status"], entry["rendered_resolution"], entry["blob_uri"]) == ("degraded", "540p", receipt["blob_uri"])
    row = store.index.existing([job.render_key], status=None)[job.render_key]
    assert row["status"] == "degraded"
    assert store.index.existing([job.render_key]) == {}, "a degraded clip is never cached under the requested key"

    monkeypatch.setattr(flows.campaign_run, "RenderPool", RenderPool)  # the GPU has room again
    again = run()
    assert (again["rendered"], again["cached"]) == (1, 0), "the 1080p clip is rendered, not served from the 540p one"
    fixed = store.read_receipt(job.render_key)
    assert fixed["status"] == "ok" and fixed["rendered_resolution"] == "1080p"
    assert (fixed["width"], fixed["height"]) == store_size(settings, "1080p")
    assert json.loads(fixed["timings"])["sr"] > 0


def store_size(settings, resolution: str) -> tuple[int, int]:
    return model_info(settings).size_for(resolution, "16:9")
