"""What the pool dispatches first and when it stops taking jobs, seen in the actor's own log of the
renders it started (one actor: dispatch order is start order), and the per-stage device time each
outcome reports (session Ray cluster, tiny real model)."""

from __future__ import annotations

import dataclasses

import pytest

from actors_testlib import make_jobs, pool_config
from faulty_actor import FaultyRenderActor
from horse_actors import RenderPool
from horse_actors.jobs import CANCELLED, NOT_ADMITTED, OK

pytestmark = pytest.mark.slow


def test_higher_priority_dispatches_first_and_a_refused_admit_stops_only_new_jobs(ray_cluster, tmp_store, tmp_path):
    # Submitted in reverse priority: the last job matters most. Priorities compare item by item.
    jobs = [dataclasses.replace(job, priority=priority)
            for job, priority in zip(make_jobs(5), [(0,), (1,), (1, 1), (2,), (3,)])]
    admitted = []

    def admit(job) -> bool:  # a budget that holds three jobs
        if len(admitted) == 3:
            return False
        admitted.append(job.render_key)
        return True

    log = tmp_path / "render-starts.log"
    with RenderPool(pool_config(tmp_store, num_actors=1, cpu_mode=True), FaultyRenderActor.planned(render_log=str(log))) \
            as pool:
        outcomes = pool.run(jobs, admit=admit)

    # admit() runs in the driver as each job is dispatched: the dispatch order itself.
    assert admitted == [jobs[4].render_key, jobs[3].render_key, jobs[2].render_key], "highest priority first"
    # The actor takes two calls at once (overlap), so the first two may start in either order on
    # its threads; the third was sent only when one of them had answered.
    started = [line.split()[0] for line in log.read_text().splitlines()]
    assert set(started[:2]) == set(admitted[:2]) and started[2:] == admitted[2:], "only the admitted jobs rendered"
    # When admit said no, the third job was running (two in flight per actor): it finished.
    assert [o.status for o in outcomes] == [CANCELLED, CANCELLED, OK, OK, OK]
    assert {o.error_class for o in outcomes[:2]} == {NOT_ADMITTED}
    for outcome in outcomes[2:]:
        assert outcome.device_type == "cpu"
        assert set(outcome.device_seconds) == {"base", "decode", "encode"}, "a 256p render has no SR stage"
        timings = outcome.timings
        assert outcome.device_seconds["base"] == pytest.approx(timings["text_encode"] + timings["denoise"], abs=1e-3)
        assert outcome.device_seconds["decode"] == timings["decode"] and outcome.device_seconds["encode"] == timings["encode"]
