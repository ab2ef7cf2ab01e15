"""Delivery QC end to end: a flow run whose clips are checked on the actor, re-rolled when their
picture is black, mastered per destination, and whose results reach every place a person looks
(receipt, version, index/qc, lineage, the run's Prefect artifacts).

The black picture is made by the test actor (tests/actors/faulty_actor.py), which blanks the
model's frames for chosen seeds: one shot is black on its take's seed only, one on every seed.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import av
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from catalog import Store
from flows.destinations import run_destinations
from flows.manifest import read_manifest, write_manifest
from flows.plan import make_plan, model_info
from horse_actors import RenderPool
from horse_actors.delivery import reroll_seed

from ..actors.faulty_actor import FaultyRenderActor
from .conftest import shot

pytestmark = pytest.mark.slow


def qc_artifacts(prefect_api: str, flow_run_id: str) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    return {a.key: a for a in asyncio.run(read())}


def test_a_black_take_is_rerolled_and_a_clip_that_never_passes_is_published_marked_failed(
        prefect_api, ray_cluster, settings, tmp_path, monkeypatch):
    import flows.campaign_run
    from flows.campaign_run import render_campaign
    from prefect import flow
    from prefect.context import FlowRunContext

    manifest = write_manifest([
        shot("once", "A horse grazes in a meadow.", languages=["en"], aspect_ratios=["16:9"], seed=11,
             destinations=["broadcast-eu"]),
        shot("always", "A horse drinks from a stream.", languages=["en"], aspect_ratios=["16:9"], seed=22,
             destinations=["broadcast-eu", "social"]),
    ], tmp_path / "qc.parquet")
    store = Store(settings.store_url)
    destinations = run_destinations(settings)
    assert destinations.max_rerolls == 1  # the default
    plan = make_plan(read_manifest(str(manifest)).shots, model_info(settings), store, destinations=destinations)
    once, always = sorted(plan.jobs, key=lambda j: j.shot_id != "once")
    seed_log = str(tmp_path / "seeds.log")
    faulty = FaultyRenderActor.planned(black_seeds={11, 22, reroll_seed(22, 1)}, seed_log=seed_log)
    monkeypatch.setattr(flows.campaign_run, "RenderPool", lambda config: RenderPool(config, actor_class=faulty))

    @flow(name="test-delivery-qc")
    def run():
        return str(FlowRunContext.get().flow_run.id), render_campaign(str(manifest), settings).as_dict()

    flow_run_id, result = run()
    assert (result["rendered"], result["failed"]) == (2, 0), "a clip that fails QC is still a rendered clip"
    rendered = [line.split() for line in Path(seed_log).read_text().splitlines()]
    assert sorted(map(tuple, rendered)) == sorted([(once.render_key, "11"), (once.render_key, str(reroll_seed(11, 1))),
                                                   (always.render_key, "22"), (always.render_key, str(reroll_seed(22, 1)))])

    # The shot black on its first seed only: re-rolled once, delivered from the second seed, passing.
    receipt = store.read_receipt(once.render_key)
    assert (receipt["status"], receipt["qc_status"], receipt["seed"]) == ("ok", "passed", 11)
    assert receipt["rendered_seed"] == reroll_seed(11, 1)
    attempts = json.loads(receipt["qc_attempts"])
    assert [(a["seed"], a["picture_passed"]) for a in attempts] == [(11, False), (reroll_seed(11, 1), True)]
    assert attempts[0]["black_s"] == pytest.approx(1.0, abs=0.05)
    assert attempts[0]["picture_failures"] == {"broadcast-eu": ["black"]}
    with store.open_blob(receipt["blob_uri"]) as f, av.open(f) as clip:
        assert clip.metadata["seed"] == str(reroll_seed(11, 1)), "the stored clip is the re-rolled one"

    qc = json.loads(receipt["qc"])["broadcast-eu"]
    assert qc["passed"] and qc["checks"]["black"]["passed"] and qc["checks"]["black"]["measured"] == 0
    for check in ("loudness", "true_peak", "frozen", "duration", "audio_length", "av_offset", "speech_present", "fps"):
        assert qc["checks"][check]["measured"] is not None, f"{check} is measured and recorded"
    assert qc["checks"]["loudness"]["measured"] == pytest.approx(-23.0, abs=0.5)
    master = qc["master"]
    with store.open_blob(master["uri"]) as f, av.open(f) as container:
        assert container.metadata["horse_destination"] == "broadcast-eu"
        assert container.metadata["horse_render_key"] == once.render_key
        assert container.streams.audio[0].codec_context.name == "pcm_s24le", "broadcast sound is 24-bit PCM"
    assert store.blob_exists(master["sha256"], "mov") and master["uri"].endswith(".mov")

    [entry] = [e for e in store.versions.read("spring-launch", 1)["entries"] if e["shot_id"] == "once"]
    assert (entry["status"], entry["qc_status"], entry["rendered_seed"]) == ("ok", "passed", reroll_seed(11, 1))
    assert entry["qc"]["broadcast-eu"]["master_uri"] == master["uri"]
    assert entry["qc"]["broadcast-eu"]["checks"]["loudness"]["measured"] == qc["checks"]["loudness"]["measured"]

    # The shot black on every seed: published (status ok: it is what was asked for), QC failed on record.
    receipt = store.read_receipt(always.render_key)
    assert (receipt["status"], receipt["qc_status"]) == ("ok", "failed")
    assert [(a["seed"], a["picture_passed"]) for a in json.loads(receipt["qc_attempts"])] == \
        [(22, False), (reroll_seed(22, 1), False)]
    [entry] = [e for e in store.versions.read("spring-launch", 1)["entries"] if e["shot_id"] == "always"]
    assert (entry["status"], entry["qc_status"], entry["rendered_seed"]) == ("ok", "failed", reroll_seed(22, 1))
    assert {name: r["checks"]["black"]["passed"] for name, r in entry["qc"].items()} == \
        {"broadcast-eu": False, "social": False}
    assert {(f["shot"], f["destination"]) for f in result["qc_failures"]} >= {("always", "broadcast-eu"), ("always", "social")}

    # index/qc: one row per clip x destination x check, the same as the receipts; one query finds the black clips.
    table = DeltaTable(f"{settings.store_url}/index/qc").to_pyarrow_table()
    black = table.filter((pc.field("check") == "black") & ~pc.field("passed")).to_pylist()
    assert sorted((r["shot_id"], r["destination"]) for r in black) == [("always", "broadcast-eu"), ("always", "social")]
    assert {r["rendered_seed"] for r in black} == {reroll_seed(22, 1)}
    assert table.num_rows == sum(len(d["checks"]) for job in (once, always)
                                     for d in json.loads(store.read_receipt(job.render_key)["qc"]).values())

    # Lineage: each attempt on the render's run; each master a run of its own, clip in, master out with its QC.
    events = store.lineage.read_events()
    [render_run] = [e for e in events if e.job.name == "render_shot"
                    and {t.key: t.value for t in e.run.facets["tags"].tags}["render_key"] == once.render_key]
    runtime = render_run.run.facets["horse_renderRuntime"]
    assert [a["seed"] for a in runtime.extra["qc_attempts"]] == [11, reroll_seed(11, 1)]
    masters = [e for e in events if e.job.name == "make_master"]
    assert len(masters) == 3 and all(e.eventType.value == "COMPLETE" for e in masters)
    [made] = [e for e in masters if e.outputs[0].facets["horse_contentHash"].digest == master["sha256"]]
    assert made.inputs[0].facets["version"].datasetVersion == store.read_receipt(once.render_key)["sha256"]
    assert made.run.facets["parent"].run.runId == render_run.run.runId
    facet = made.outputs[0].facets["horse_deliveryQC"]
    assert (facet.destination, facet.passed) == ("broadcast-eu", True)
    assert facet.checks["true_peak"]["measured"] == qc["checks"]["true_peak"]["measured"]

    # The run's Prefect artifacts: the QC table (a row per clip x destination), failures in the summary.
    artifacts = qc_artifacts(prefect_api, flow_run_id)
    rows = artifacts["spring-launch-qc"].data
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert sorted((r["shot"], r["destination"], r["result"]) for r in rows) == [
        ("always", "broadcast-eu", "FAIL"), ("always", "social", "FAIL"), ("once", "broadcast-eu", "pass")]
    summary = artifacts["spring-launch-summary"].data
    [line] = [line for line in summary.splitlines() if line.startswith("- always en-16x9-t1 → broadcast-eu: ")]
    assert "## Delivery QC" in summary and "black 1 (<= 0.5 s)" in line  # canonical JSON writes 1.0 as 1
    assert f"once en-16x9-t1: 11 → {reroll_seed(11, 1)}" in summary
