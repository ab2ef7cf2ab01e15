"""Tail-only retry on the session Ray cluster (tiny model, file:// store): after an OOM in the SR
stage or the decode, or the actor's death after the base stage, the retry starts from the last
stored stage result; the outcome says which stages ran in which try, and an independent log of
the pipeline's stage calls shows that no stage ran twice that did not have to."""

from __future__ import annotations

import dataclasses

import pytest

from actors_testlib import make_jobs, pool_config
from catalog import Store
from faulty_actor import FaultyRenderActor, stage_starts
from horse_actors import RenderPool
from horse_actors.staged import stage_key
from model import describe_tiny

pytestmark = pytest.mark.slow


def test_oom_in_sr_or_decode_retries_from_the_stored_stage(ray_cluster, tmp_store, tmp_path):
    jobs = make_jobs(3, campaign="tail", overrides={i: {"resolution": "1080p", "aspect_ratio": "16:9"} for i in range(3)})
    sr_once, decode, lowered = jobs
    log = tmp_path / "stages.log"
    actor = FaultyRenderActor.planned(oom_once={sr_once.render_key: {"1080p_sr"}},
                                      oom_at={decode.render_key: {"decode"}, lowered.render_key: {"1080p_sr"}},
                                      stage_log=str(log))
    with RenderPool(pool_config(tmp_store, num_actors=1), actor) as pool:
        outcomes = {o.render_key: o for o in pool.run(jobs)}
    starts = stage_starts(log)

    retried = outcomes[sr_once.render_key]
    assert retried.status == "ok", retried.error_message
    assert retried.stages_run == {"1": ["base", "sr"], "1+tiled_decode": ["sr", "decode"]}
    assert retried.resumed_from == "base"
    assert starts[sr_once.render_key] == [(1, "base"), (1, "sr"), (1, "sr"), (1, "decode")], "base ran once"

    tail = outcomes[decode.render_key]
    assert tail.status == "ok" and tail.fallback == ["tiled_decode"]
    assert tail.stages_run == {"1": ["base", "sr", "decode"], "1+tiled_decode": ["decode"]}
    assert tail.resumed_from == "sr" and set(tail.stage_results) == {"base", "sr"}
    assert starts[decode.render_key] == [(1, "base"), (1, "sr"), (1, "decode"), (1, "decode")]

    degraded = outcomes[lowered.render_key]
    assert (degraded.status, degraded.rendered_resolution) == ("degraded", "540p")
    assert degraded.stages_run == {"1": ["base", "sr"], "1+tiled_decode": ["sr"],
                                   "1+tiled_decode+lower_sr": ["sr", "decode"]}
    assert [s for _, s in starts[lowered.render_key]].count("base") == 1
    # the 540p sr result is stored under the 540p request's key, never under the 1080p one
    fingerprints = describe_tiny().stage_fingerprints
    asked, delivered = lowered.request, dataclasses.replace(lowered.request, resolution="540p")
    stored = Store(tmp_store).stage_results.existing(
        [stage_key(asked, "sr", fingerprints), stage_key(delivered, "sr", fingerprints)])
    assert set(stored) == {stage_key(delivered, "sr", fingerprints)}
    assert degraded.stage_results["sr"]["stage_key"] == stage_key(delivered, "sr", fingerprints)


def test_a_retry_after_the_actor_died_starts_from_the_stored_base(ray_cluster, tmp_store, tmp_path):
    [job] = make_jobs(1, campaign="died", overrides={0: {"resolution": "540p"}})
    log = tmp_path / "stages.log"
    actor = FaultyRenderActor.planned(die_after={job.render_key: "base"}, stage_log=str(log))
    with RenderPool(pool_config(tmp_store, num_actors=1), actor) as pool:
        [outcome] = pool.run([job])

    assert outcome.status == "ok" and outcome.attempt == 2, outcome.error_message
    assert outcome.earlier_attempts[0]["error_class"] == "ActorDied"
    assert outcome.stages_run == {"1": ["base"], "2": ["sr", "decode"]}
    assert outcome.resumed_from == "base"
    assert stage_starts(log)[job.render_key] == [(1, "base"), (2, "sr"), (2, "decode")]
