"""RenderPool.stream: a run of any size keeps no outcome and takes jobs only as actors free up, so
the driver's memory does not grow with the number of jobs (issue 21; benchmarks/scale.py measures
the RSS). The actor is a stand-in without a model: the scheduler is what is under test."""

from __future__ import annotations

import gc
import weakref

import pytest

from horse_actors import ModelSpec, PoolConfig, RenderJob, RenderPool, Scheduling, StoreTarget
from horse_actors.jobs import CANCELLED, NOT_ADMITTED
from standin_actor import InstantActor

pytestmark = pytest.mark.slow


def test_stream_keeps_no_outcome_and_draws_jobs_only_as_actors_free_up(ray_cluster, tmp_store):
    n, in_flight = 300, 2
    taken, lead, alive, held = [0], [], [], []

    def jobs():
        for i in range(n):
            taken[0] += 1
            yield RenderJob(f"{i:064x}", None, "spring", f"s{i:04d}", "en-16x9-t1")

    def on_outcome(outcome):
        lead.append(taken[0] - len(alive) - 1)  # jobs taken but not yet finished, this one excluded
        alive.append(weakref.ref(outcome))
        if len(alive) in (n // 2, n):  # while the run is on: what of the earlier outcomes is still held?
            gc.collect()
            held.append(sum(ref() is not None for ref in alive[:-1]))

    config = PoolConfig(ModelSpec("none", warmup_seconds=0), StoreTarget(tmp_store),
                        scheduling=Scheduling(num_actors=2, max_in_flight_per_actor=in_flight, job_deadline_s=300))
    with RenderPool(config, actor_class=InstantActor) as pool:
        pool.start()
        assert pool.stream(jobs(), on_outcome) == n
    assert held == [0, 0], f"outcomes held by the pool mid-run and at the end: {held}"

    assert len(alive) == n
    # 2 actors x 2 in flight, and one job drawn ahead into the queue: never the whole list.
    assert max(lead) <= 2 * in_flight + 1, max(lead)


def test_stream_dispatches_by_priority_and_stops_taking_jobs_when_admit_says_no(ray_cluster, tmp_store):
    # The runs' path (RenderStream -> run_routed -> stream) orders and admits as RenderPool.run does.
    # Submitted in reverse priority; one actor, one job at a time: outcomes arrive in dispatch order.
    jobs = [RenderJob(f"{i:064x}", None, "spring", f"s{i}", "en-16x9-t1", priority=priority)
            for i, priority in enumerate([(0,), (1,), (1, 1), (2,), (3,)])]
    admitted, seen = [], []

    def admit(job) -> bool:  # a budget that holds three jobs
        if len(admitted) == 3:
            return False
        admitted.append(job.render_key)
        return True

    config = PoolConfig(ModelSpec("none", warmup_seconds=0), StoreTarget(tmp_store),
                        scheduling=Scheduling(num_actors=1, max_in_flight_per_actor=1, job_deadline_s=300))
    with RenderPool(config, actor_class=InstantActor) as pool:
        assert pool.stream(jobs, seen.append, admit=admit) == 5
    assert all(o.status != "failed" for o in seen), [(o.status, o.error_class, o.error_message) for o in seen]
    assert [o.render_key for o in seen if o.status == "ok"] == [jobs[4].render_key, jobs[3].render_key,
                                                                 jobs[2].render_key] == admitted
    assert sorted((o.render_key, o.status, o.error_class) for o in seen if o.status != "ok") == [
        (jobs[0].render_key, CANCELLED, NOT_ADMITTED), (jobs[1].render_key, CANCELLED, NOT_ADMITTED)]
