"""The dialogue gate end to end: a flow run whose actors hear every clip with pocketsphinx, re-roll
the one that says the wrong line, and record both attempts everywhere a person looks (receipt,
version, render index, index/qc, lineage, the Prefect QC table, `horse qc`).

The speech is flite's, put into the clips by the test actor (tests/actors/faulty_actor.py): the
shot "wrong" says another line on its take's seed and the brief's line on its re-roll; the shot
"right" says the brief's line at once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from deltalake import DeltaTable

from catalog import Store
from flows.dialogue import dialogue_policy
from flows.manifest import read_manifest, write_manifest
from flows.plan import make_plan, model_info
from flows.settings import load_settings
from horse_actors import RenderPool
from horse_actors.delivery import reroll_seed

from ..actors.faulty_actor import FaultyRenderActor
from .conftest import shot
from .test_delivery_qc import qc_artifacts

pytestmark = pytest.mark.slow

LINE = "Happy Horse makes mornings brighter."  # flite: 2.7 s; pocketsphinx hears it word for word
SECONDS = 2.92  # 73 frames: the tiny model's video and audio end together (3 s would not)


def test_a_clip_saying_the_wrong_line_is_rerolled_and_both_attempts_are_recorded(
        prefect_api, ray_cluster, tmp_store, tmp_path, monkeypatch, speak):
    import flows.campaign_run
    from flows.campaign_run import render_campaign
    from flows.cli.qc import stored_results
    from prefect import flow
    from prefect.context import FlowRunContext

    settings = load_settings(store_url=tmp_store, ray={"cpu_mode": True, "num_actors": 1, "job_deadline_s": 300},
                             dialogue={"recognizer": "pocketsphinx"})
    lines = [{"speaker": "a cheerful farmer", "language": "en", "line": LINE}]
    manifest = write_manifest([
        shot(shot_id, "A farmer speaks to camera in a sunny barn.", dialogue=lines, languages=["en"],
             aspect_ratios=["16:9"], duration_s=SECONDS, seed=seed, must_say=["Happy Horse"])
        for shot_id, seed in (("wrong", 31), ("right", 32))], tmp_path / "dialogue.parquet")
    store = Store(settings.store_url)
    plan = make_plan(read_manifest(str(manifest)).shots, model_info(settings), store,
                     dialogue=dialogue_policy(settings))
    wrong, right = sorted(plan.jobs, key=lambda j: j.shot_id != "wrong")
    rerolled = reroll_seed(31, 1)
    seed_log = str(tmp_path / "seeds.log")
    faulty = FaultyRenderActor.planned(seed_log=seed_log, speech={
        31: speak("The weather is cold today."), rerolled: speak(LINE), 32: speak(LINE)})
    monkeypatch.setattr(flows.campaign_run, "RenderPool", lambda config: RenderPool(config, actor_class=faulty))

    @flow(name="test-dialogue-gate")
    def run():
        return str(FlowRunContext.get().flow_run.id), render_campaign(str(manifest), settings).as_dict()

    flow_run_id, result = run()
    assert (result["rendered"], result["failed"]) == (2, 0)
    rendered = sorted(tuple(line.split()) for line in Path(seed_log).read_text().splitlines())
    assert rendered == sorted([(wrong.render_key, "31"), (wrong.render_key, str(rerolled)), (right.render_key, "32")])

    # Receipt: the re-roll is delivered; both attempts with what was heard and the scores.
    receipt = store.read_receipt(wrong.render_key)
    assert (receipt["status"], receipt["dialogue_status"], receipt["rendered_seed"]) == ("ok", "passed", rerolled)
    first, second = json.loads(receipt["qc_attempts"])
    assert (first["seed"], first["dialogue"]["status"], second["dialogue"]["status"]) == (31, "dialogue_failed", "passed")
    assert first["dialogue"]["missing_terms"] == ["Happy Horse"] and first["dialogue"]["error_rate"] > 0.2
    assert "weather" in first["dialogue"]["transcript"] and first["dialogue"]["recognizer"] == "pocketsphinx"
    delivered = json.loads(receipt["dialogue"])
    assert (delivered["seed"], delivered["attempts"], delivered["error_rate"]) == (rerolled, 2, 0.0)
    assert store.read_receipt(right.render_key)["dialogue_status"] == "passed"

    # Version, render index, index/qc: the same result, one query away.
    entries = {e["shot_id"]: e for e in store.versions.read("spring-launch", 1)["entries"]}
    assert (entries["wrong"]["dialogue_status"], entries["wrong"]["rendered_seed"]) == ("passed", rerolled)
    assert entries["wrong"]["dialogue"]["transcript"] == "happy horse makes mornings brighter"
    index = store.index.to_arrow().to_pylist()
    assert {r["shot_id"]: r["dialogue_status"] for r in index} == {"wrong": "passed", "right": "passed"}
    rows = DeltaTable(f"{settings.store_url}/index/qc").to_pyarrow_table().to_pylist()
    assert sorted((r["shot_id"], r["check"], r["passed"], r["rendered_seed"]) for r in rows) == [
        ("right", "dialogue", True, 32), ("wrong", "dialogue", True, rerolled)]

    # Lineage: both attempts on the render's run.
    [render_run] = [e for e in store.lineage.read_events() if e.job.name == "render_shot"
                    and {t.key: t.value for t in e.run.facets["tags"].tags}["render_key"] == wrong.render_key]
    runtime = render_run.run.facets["horse_renderRuntime"].extra
    assert [a["dialogue"]["status"] for a in runtime["qc_attempts"]] == ["dialogue_failed", "passed"]

    # The Prefect QC table and the summary; `horse qc` of the campaign.
    artifacts = qc_artifacts(prefect_api, flow_run_id)
    table = artifacts["spring-launch-qc"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert sorted((r["shot"], r["dialogue"], r["heard"]) for r in table) == [
        ("right", "pass", "happy horse makes mornings brighter"), ("wrong", "pass", "happy horse makes mornings brighter")]
    summary = artifacts["spring-launch-summary"].data
    assert "## Dialogue gate" in summary and f"wrong en-16x9-t1: 31 → {rerolled}" in summary
    document = stored_results(settings, "spring-launch", None, []).document
    assert (document["dialogue_passed"], document["dialogue_failed"]) == (2, 0)
