"""Overlap on one actor (Scheduling.overlap): the next job renders while the last one's CPU tail
(encode, checks, upload) runs, and the model still renders one job at a time."""

from __future__ import annotations

import threading

import pytest

import horse_actors.actor as actor_module
from actors_testlib import assert_plays_back, make_jobs, pool_config
from horse_actors import ModelSpec, RenderActor, RenderPool, StoreTarget


def test_the_next_job_renders_while_the_last_one_encodes(tmp_store, monkeypatch):
    actor = RenderActor(ModelSpec("tiny", warmup_seconds=0), StoreTarget(tmp_store))
    first, second = make_jobs(2)
    first_renders, second_renders = threading.Event(), threading.Event()
    rendering, most_at_once, encoded_meanwhile = [], [], []

    real_render = actor._render_with_ladder

    def render(job, *adapter):
        rendering.append(job.render_key)
        most_at_once.append(len(rendering))
        (first_renders if job.render_key == first.render_key else second_renders).set()
        try:
            return real_render(job, *adapter)
        finally:
            rendering.remove(job.render_key)

    real_encode = actor_module.encode_mp4

    def encode(clip, path, tags, **kwargs):
        if tags["render_key"] == first.render_key:   # the first clip's tail waits for the next render
            encoded_meanwhile.append(second_renders.wait(timeout=120))
        return real_encode(clip, path, tags, **kwargs)

    monkeypatch.setattr(actor, "_render_with_ladder", render)
    monkeypatch.setattr(actor_module, "encode_mp4", encode)
    outcomes = {}
    threads = [threading.Thread(target=lambda j=j: outcomes.update({j.render_key: actor.render(j, call_id=j.render_key)}))
               for j in (first, second)]
    threads[0].start()
    assert first_renders.wait(timeout=120)          # the second call comes while the first one renders
    threads[1].start()
    for t in threads:
        t.join()
    assert max(most_at_once) == 1, "two renders ran on the model at once"
    assert encoded_meanwhile == [True], "the second job did not render while the first one encoded"
    assert all(o.ok for o in outcomes.values()), [o.error_message for o in outcomes.values()]
    assert actor.finished([first.render_key, second.render_key]) == outcomes
    for job in (first, second):
        assert_plays_back(outcomes[job.render_key], job)


@pytest.mark.slow
def test_a_pool_with_overlap_renders_each_job_once_on_resident_models(ray_cluster, tmp_store):
    jobs = make_jobs(4, seconds=0.4)
    with RenderPool(pool_config(tmp_store, overlap=True)) as pool:
        outcomes = pool.run(jobs)
        stats = pool.actor_stats()
    assert [o.status for o in outcomes] == ["ok"] * 4, [o.error_message for o in outcomes if not o.ok]
    assert [s["load_count"] for s in stats] == [1, 1] and sum(s["renders"] for s in stats) == 4
    assert all(o.attempt == 1 for o in outcomes)
    # each actor got its second job while rendering its first: that call ran and waited for the model
    assert any(o.timings["model_wait"] > 0 for o in outcomes)
