"""RenderPool on the session Ray cluster (2 fake GPUs) with the tiny real model and a file:// store."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import pytest

from actors_testlib import assert_plays_back, blob_files, make_jobs, pid_alive, pool_config
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


def test_sigkill_of_a_rendering_actor_loses_and_duplicates_nothing(ray_cluster, tmp_store):
    jobs = make_jobs(6, campaign="crash")
    killed = {}
    with RenderPool(pool_config(tmp_store)) as pool:
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
    assert all(s["load_count"] == 1 for s in stats), "a replacement is a fresh actor with one load"
    for outcome, job in zip(outcomes, jobs):
        assert_plays_back(outcome, job)
    files = blob_files(tmp_store)
    assert len(files["mp4"]) == 6 and len(files["jpg"]) == 6, "no duplicate blob"
    assert files["other"] == [], "no partial or temporary file left behind"


def test_hung_job_is_retried_on_another_actor_and_invalid_or_oom_jobs_fail_at_once(ray_cluster, tmp_store):
    jobs = make_jobs(6, campaign="faults", overrides={1: {"prompt": ""}})  # empty prompt: model.InvalidRequest
    hang, invalid, oom_once, oom_always = jobs[0], jobs[1], jobs[2], jobs[3]
    hang = jobs[0] = dataclasses.replace(hang, deadline_s=4.0)
    config = pool_config(tmp_store, fault_injection={
        "hang_keys": [hang.render_key],
        "oom_keys": {oom_once.render_key: 1, oom_always.render_key: 99},
    })
    with RenderPool(config) as pool:
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
    assert outcomes[oom_once.render_key].fallback == "tiled_decode"
    oom = outcomes[oom_always.render_key]
    assert (oom.status, oom.error_class, oom.attempt, oom.retryable) == ("failed", "GpuOutOfMemory", 1, False)

    for job in jobs[4:]:
        assert outcomes[job.render_key].status == "ok" and outcomes[job.render_key].fallback is None
        assert_plays_back(outcomes[job.render_key], job)


def test_cancel_stops_queued_and_running_work_and_frees_every_actor(ray_cluster, tmp_store):
    import ray

    jobs = make_jobs(10, campaign="cancel")
    cancel = threading.Event()
    cancelled_at = {}

    def cancel_after_first(outcome):
        if not cancel.is_set():
            cancelled_at["t"] = time.monotonic()
            cancel.set()

    pool = RenderPool(pool_config(tmp_store))
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
