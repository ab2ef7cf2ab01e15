"""RenderPool on the session Ray cluster (2 fake GPUs) with the tiny real model and a file:// store."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import av
import pytest

from actors_testlib import TINY_540P_16x9, assert_plays_back, blob_files, local_path, make_jobs, pid_alive, pool_config
from faulty_actor import FaultyRenderActor, render_starts
from horse_actors import RenderPool

pytestmark = pytest.mark.slow


def test_twelve_jobs_on_two_actors_each_loading_the_model_once(ray_cluster, tmp_store):
    jobs = make_jobs(12)
    seen = []
    with RenderPool(pool_config(tmp_store)) as pool:
        started = pool.start()
        outcomes = pool.run(jobs, on_outcome=seen.append)
        stats = pool.actor_stats()

    assert [o.render_key for o in outcomes] == [j.render_key for j in jobs]
    assert sorted(o.render_key for o in seen) == sorted(j.render_key for j in jobs), "one callback per job"
    assert [o.status for o in outcomes] == ["ok"] * 12, [o.error_message for o in outcomes if not o.ok]
    assert {s["actor_id"] for s in started} == {s["actor_id"] for s in stats} == {o.actor_id for o in outcomes}
    assert len(stats) == 2 and sorted(s["gpu_ids"][0] for s in stats) == ["0", "1"]
    assert [s["load_count"] for s in stats] == [1, 1], "each actor loaded the model exactly once"
    assert sum(s["renders"] for s in stats) == 12
    assert all(s["load_s"] > 0 and s["rss_bytes"] > 0 for s in stats)
    for outcome, job in zip(outcomes, jobs):
        assert outcome.attempt == 1 and not outcome.earlier_attempts
        assert set(outcome.timings) >= {"queue", "text_encode", "denoise", "sr", "decode", "encode", "upload"}
        assert_plays_back(outcome, job)
    files = blob_files(tmp_store)
    assert (len(files["mp4"]), files["other"]) == (12, [])
    assert len(files["safetensors"]) == 12, "each job kept its base stage result"


def test_sigkill_of_a_rendering_actor_loses_and_duplicates_nothing(ray_cluster, tmp_store, tmp_path):
    jobs = make_jobs(6, campaign="crash")
    killed = {}
    render_log = tmp_path / "render-starts.log"  # tiny renders are deterministic: count starts, not files
    with RenderPool(pool_config(tmp_store), FaultyRenderActor.planned(render_log=str(render_log))) as pool:
        pids = {s["actor_id"]: s["pid"] for s in pool.start()}

        def kill_the_producer_of_the_first_outcome(outcome):
            # That actor has already started its next queued job (two are in flight per actor).
            if not killed:
                killed["actor_id"], killed["pid"] = outcome.actor_id, pids[outcome.actor_id]
                os.kill(killed["pid"], signal.SIGKILL)

        outcomes = pool.run(jobs, on_outcome=kill_the_producer_of_the_first_outcome)
        stats = pool.actor_stats()
        replacements = pool.replacements

    assert [o.status for o in outcomes] == ["ok"] * 6, [o.error_message for o in outcomes if not o.ok]
    assert len({o.render_key for o in outcomes}) == 6, "each job completed exactly once"
    retried = [o for o in outcomes if o.attempt > 1]
    assert retried and all(o.earlier_attempts[0]["error_class"] == "ActorDied" for o in retried)
    assert all(o.actor_id != killed["actor_id"] for o in retried)
    assert replacements == 1 and not pid_alive(killed["pid"])
    starts = render_starts(render_log)
    for outcome in outcomes:  # a lost attempt may have died before it started; none started twice
        started = starts.get(outcome.render_key, [])
        assert started == sorted(set(started)) and started[-1:] == [outcome.attempt], (outcome.render_key, started)
    assert all(s["load_count"] == 1 for s in stats), "a replacement is a fresh actor with one load"
    for outcome, job in zip(outcomes, jobs):
        assert_plays_back(outcome, job)
    files = blob_files(tmp_store)
    assert len(files["mp4"]) == 6 and len(files["jpg"]) == 6, "no duplicate blob"
    assert len(files["safetensors"]) == 6, "a retried job's base stage result is the same blob"
    assert files["other"] == [], "no partial or temporary file left behind"


def test_hung_job_is_retried_on_another_actor_and_invalid_or_oom_jobs_fail_at_once(ray_cluster, tmp_store):
    jobs = make_jobs(6, campaign="faults", overrides={1: {"prompt": ""}})  # empty prompt: model.InvalidRequest
    hang, invalid, oom_once, oom_always = jobs[0], jobs[1], jobs[2], jobs[3]
    hang = jobs[0] = dataclasses.replace(hang, deadline_s=15.0)  # each attempt; a loaded 2-core box needs >4 s
    actor = FaultyRenderActor.planned(
        hang_keys=[hang.render_key],
        oom_at={oom_once.render_key: {"decode"},      # fits once the VAE decodes in tiles
                oom_always.render_key: {"distill"}},  # the base stage itself never fits
    )
    with RenderPool(pool_config(tmp_store), actor) as pool:
        first_actors = {s["actor_id"] for s in pool.start()}
        outcomes = {o.render_key: o for o in pool.run(jobs)}
        replacements = pool.replacements

    hung = outcomes[hang.render_key]
    assert hung.status == "ok" and hung.attempt == 2
    assert hung.earlier_attempts[0]["error_class"] == "DeadlineExceeded"
    stuck_actor = hung.earlier_attempts[0]["actor_id"]
    assert stuck_actor in first_actors and hung.actor_id != stuck_actor
    assert replacements == 1

    bad = outcomes[invalid.render_key]
    assert (bad.status, bad.error_class, bad.attempt, bad.retryable) == ("failed", "InvalidRequest", 1, False)
    assert "prompt" in bad.error_message and not bad.earlier_attempts

    assert outcomes[oom_once.render_key].status == "ok"
    assert outcomes[oom_once.render_key].fallback == ["tiled_decode"]
    assert outcomes[oom_once.render_key].rendered_resolution == "256p", "tiled decode keeps the resolution"
    oom = outcomes[oom_always.render_key]
    assert (oom.status, oom.error_class, oom.attempt, oom.retryable) == ("failed", "GpuOutOfMemory", 1, False)

    for job in jobs[4:]:
        assert outcomes[job.render_key].status == "ok" and outcomes[job.render_key].fallback == []
        assert_plays_back(outcomes[job.render_key], job)


def test_oom_at_the_1080p_sr_stage_renders_540p_and_says_so_and_a_ladder_that_runs_out_fails(ray_cluster, tmp_store):
    jobs = make_jobs(2, campaign="oom-sr", overrides={i: {"resolution": "1080p"} for i in (0, 1)})
    lowered, exhausted = jobs
    actor = FaultyRenderActor.planned(oom_at={lowered.render_key: {"1080p_sr"},
                                              exhausted.render_key: {"1080p_sr", "540p_sr"}})
    with RenderPool(pool_config(tmp_store, num_actors=1), actor) as pool:
        outcomes = {o.render_key: o for o in pool.run(jobs)}

    degraded = outcomes[lowered.render_key]
    assert (degraded.status, degraded.ok, degraded.attempt) == ("degraded", False, 1), degraded.error_message
    assert degraded.rendered_resolution == "540p" and degraded.fallback == ["tiled_decode", "lower_sr"]
    assert (degraded.width, degraded.height) == TINY_540P_16x9
    with av.open(str(local_path(degraded.blob_uri))) as box:
        video = box.streams.video[0].codec_context
        assert (video.width, video.height) == TINY_540P_16x9, "the outcome describes the stored file"

    failed = outcomes[exhausted.render_key]
    assert (failed.status, failed.error_class, failed.attempt, failed.retryable) == \
        ("failed", "GpuOutOfMemory", 1, False)
    assert failed.blob_uri is None and "540p_sr" in failed.error_message, "the last rung's OOM is reported"


def test_cancel_stops_queued_and_running_work_and_frees_every_actor(ray_cluster, tmp_store):
    import ray

    jobs = make_jobs(10, campaign="cancel")
    cancel = threading.Event()
    cancelled_at = {}

    def cancel_after_first(outcome):
        if not cancel.is_set():
            cancelled_at["t"] = time.monotonic()
            cancel.set()

    # A job past its last cancel check (decode, encode, upload) finishes and stores its clip; the
    # grace lets it report that on a loaded 2-core box too (3 s did not always), so no blob is orphaned.
    pool = RenderPool(pool_config(tmp_store, cancel_grace_s=20.0))
    pids = [s["pid"] for s in pool.start()]
    outcomes = pool.run(jobs, on_outcome=cancel_after_first, cancel_event=cancel)
    took = time.monotonic() - cancelled_at["t"]
    print(f"run returned {took:.2f}s after cancel:", [o.status for o in outcomes])

    statuses = [o.status for o in outcomes]
    assert statuses.count("cancelled") >= 5 and set(statuses) <= {"ok", "cancelled"}
    assert all(o.error_class == "Cancelled" for o in outcomes if o.status == "cancelled")
    assert took < 30, "hang guard only; the measured time is printed"
    assert pool.actor_stats() == []
    # Ray reports the actors dead before the raylet has reaped their processes.
    deadline = time.monotonic() + 10
    while (any(pid_alive(p) for p in pids) or ray.available_resources().get("GPU", 0) < 2) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    print(f"actor processes gone {time.monotonic() - cancelled_at['t']:.2f}s after cancel")
    assert not any(pid_alive(p) for p in pids), "no actor process is left"
    assert ray.available_resources().get("GPU", 0) == 2, "both GPUs are free again"
    ok = [o for o in outcomes if o.ok]
    assert len(blob_files(tmp_store)["mp4"]) == len(ok)
