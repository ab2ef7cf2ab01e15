"""Cancelling API jobs: a task still queued at the provider is cancelled there and recorded
`cancelled` (nothing to bill, the next run pays for a new one); a running one is left to finish,
its task id kept, and the next run collects it instead of paying again."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from backends_testlib import api_job, fast_spec, with_limit
from test_api_backend import wait_for

from catalog import Store
from horse_actors import Scheduling, StoreTarget
from horse_actors.api_actor import ProviderActors
from horse_actors.backends import ApiBackend


@pytest.mark.slow
def test_cancelling_a_run_cancels_queued_provider_tasks_and_leaves_running_ones_to_a_rerun(
        ray_cluster, modelark, tmp_store):
    spec = with_limit(fast_spec("seedance-2.0", modelark), 2)
    modelark.hold, modelark.run_limit = True, 1  # the provider runs one task; the other waits in its queue
    jobs = [api_job(spec, seed=1, shot="a"), api_job(spec, seed=2, shot="b")]
    outcomes, cancel = [], threading.Event()
    with ProviderActors({spec.name: spec}, StoreTarget(tmp_store), Scheduling(poll_s=0.05, cancel_grace_s=30)) as actors:
        run = threading.Thread(target=actors.run, args=(jobs, outcomes.append, cancel))
        run.start()
        wait_for(lambda: len(modelark.tasks) == 2 and all(t.polls >= 2 for t in modelark.tasks.values()),
                 "one task running and one queued at the provider")
        cancel.set()
        run.join(60)

    assert not run.is_alive() and [o.status for o in outcomes] == ["cancelled", "cancelled"]
    assert modelark.calls["cancel"] == 1, "only the queued task was asked to cancel; the running one goes on"
    store = Store(tmp_store)
    records = {job.shot_id: store.provider_tasks.latest(job.render_key) for job in jobs}
    at_provider = {shot: modelark.tasks[r["task_id"]].status for shot, r in records.items()}
    assert sorted(at_provider.values()) == ["cancelled", "running"]
    assert {shot: r["status"] for shot, r in records.items()} == at_provider, "recorded as the provider has them"
    said = {o.task_id: o.error_message for o in outcomes}
    assert set(said) == {r["task_id"] for r in records.values()}, said

    modelark.release()
    modelark.run_limit = 10**6  # tasks advance only when polled: let the rerun's new task run beside the old one
    backend = ApiBackend(spec, StoreTarget(tmp_store))
    again = {job.shot_id: backend.render(job) for job in jobs}  # the rerun
    assert [o.status for o in again.values()] == ["ok", "ok"], [o.error_message for o in again.values()]
    assert modelark.creates == 3, "the running task was collected; only the cancelled one was paid again"
    ran_on = [shot for shot, status in at_provider.items() if status == "running"]
    assert again[ran_on[0]].task_id == records[ran_on[0]]["task_id"]


def test_a_fal_request_that_started_while_being_cancelled_is_collected_not_paid_twice(fal, tmp_store):
    spec = fast_spec("seedance-2.0-fal", fal)
    fal.run_limit, fal.cancel_races = 0, True  # queued until cancelled; then it starts anyway
    job = api_job(spec)
    stop = threading.Event()
    backend = ApiBackend(spec, StoreTarget(tmp_store))
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(backend.render, job, should_stop=stop.is_set)
        wait_for(lambda: fal.polls >= 2, "the request to be polled in the queue")
        stop.set()
        first = future.result(timeout=60)

    assert first.status == "cancelled" and fal.calls["cancel"] == 1
    assert Store(tmp_store).provider_tasks.latest(job.render_key)["status"] == "cancelled"
    fal.run_limit = 10**6
    again = backend.render(job)  # the rerun looks again before paying for a new request
    assert again.status == "ok", again.error_message
    assert fal.creates == 1 and again.task_id == first.task_id
