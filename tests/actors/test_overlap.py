"""Overlap on one actor (Scheduling.overlap, the default): the next job renders while the last
one's CPU tail (encode, the dialogue gate, upload) runs, the model still renders one job at a time,
and the actor holds at most two clips."""

from __future__ import annotations

import dataclasses
import threading

import pytest

import horse_actors.actor as actor_module
from actors_testlib import assert_plays_back, make_jobs, pool_config
from horse_actors import DialogueCheck, ModelSpec, RenderActor, RenderPool, SpeechSpec, StoreTarget
from horse_actors.jobs import MODEL_STAGES
from media.dialogue import Thresholds


def test_the_next_job_renders_while_the_last_one_encodes_and_is_heard(tmp_store, monkeypatch):
    # The dialogue gate (real pocketsphinx) is in the tail: the first clip is heard while the second renders.
    actor = RenderActor(ModelSpec("tiny", warmup_seconds=0, speech=SpeechSpec("pocketsphinx")), StoreTarget(tmp_store))
    line = DialogueCheck("en", ("a horse gallops across a beach",), Thresholds(0.2, 0.8, 0.6))
    first, second = [dataclasses.replace(job, dialogue=line) for job in make_jobs(2)]
    first_renders, second_renders, first_heard = threading.Event(), threading.Event(), threading.Event()
    rendering, most_at_once, encoded_meanwhile, events = [], [], [], []

    real_render = actor.staged.render

    def render(job, *args, **kwargs):
        rendering.append(job.render_key)
        most_at_once.append(len(rendering))
        events.append(("render", job.render_key))
        (first_renders if job.render_key == first.render_key else second_renders).set()
        try:
            clip = real_render(job, *args, **kwargs)
            if job.render_key == second.render_key:  # hold the model until the first clip was heard
                first_heard.wait(timeout=60)
            return clip
        finally:
            rendering.remove(job.render_key)
            events.append(("rendered", job.render_key))

    real_hear = actor.gate.hear

    def hear(path, check):  # the first clip is heard first: the second's render waits for it
        events.append(("hear", "first" if not first_heard.is_set() else "second"))
        try:
            return real_hear(path, check)
        finally:
            first_heard.set()

    real_encode = actor_module.encode_mp4

    def encode(clip, path, tags, **kwargs):
        if tags["render_key"] == first.render_key:   # the first clip's tail waits for the next render
            encoded_meanwhile.append(second_renders.wait(timeout=120))
        return real_encode(clip, path, tags, **kwargs)

    monkeypatch.setattr(actor.staged, "render", render)
    monkeypatch.setattr(actor_module, "encode_mp4", encode)
    monkeypatch.setattr(actor.gate, "hear", hear)
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
    # the first clip's gate ran after the second render began and before it ended
    heard = events.index(("hear", "first"))
    assert events.index(("render", second.render_key)) < heard < events.index(("rendered", second.render_key)), events
    assert all(o.dialogue["status"] in ("passed", "dialogue_failed") for o in outcomes.values()), "both were heard"
    assert all(o.ok for o in outcomes.values()), [o.error_message for o in outcomes.values()]
    assert actor.finished([first.render_key, second.render_key]) == outcomes
    for job in (first, second):
        assert_plays_back(outcomes[job.render_key], job)


class _Gate(threading.Semaphore):
    """The actor's clip semaphore, saying when a call had to wait at it."""

    def __init__(self, value: int, waited: threading.Event):
        super().__init__(value)
        self.waited = waited

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        if super().acquire(blocking=False):
            return True
        self.waited.set()
        return super().acquire(blocking, timeout)

    __enter__ = acquire


def test_an_actor_holds_two_clips_at_most_and_counts_its_model_busy_time(tmp_store, monkeypatch):
    actor = RenderActor(ModelSpec("tiny", warmup_seconds=0), StoreTarget(tmp_store))
    jobs = make_jobs(3, seconds=0.4)
    second_rendered, third_waits_or_renders = threading.Event(), threading.Event()
    alive, most_alive = set(), []   # calls whose clip exists: from its render's start to the call's end
    monkeypatch.setattr(actor, "_clips", _Gate(actor.CLIPS_AT_ONCE, third_waits_or_renders))

    real_render = actor.staged.render

    def render(job, *args, **kwargs):
        alive.add(job.render_key)
        most_alive.append(len(alive))
        if job.render_key == jobs[2].render_key:
            third_waits_or_renders.set()
        clip = real_render(job, *args, **kwargs)
        if job.render_key == jobs[1].render_key:
            second_rendered.set()
        return clip

    real_encode = actor_module.encode_mp4

    def encode(clip, path, tags, **kwargs):
        if tags["render_key"] == jobs[0].render_key:  # the first clip stays in its tail until the third
            assert second_rendered.wait(timeout=120)  # call either renders (too many clips) or waits
            assert third_waits_or_renders.wait(timeout=120)
        return real_encode(clip, path, tags, **kwargs)

    real_render_clip = actor._render_clip

    def render_clip(job, *args):  # runs while the call holds its clip
        try:
            return real_render_clip(job, *args)
        finally:
            alive.discard(job.render_key)

    def call(job):
        outcomes[job.render_key] = actor.render(job, call_id=job.render_key)

    monkeypatch.setattr(actor, "_render_clip", render_clip)
    monkeypatch.setattr(actor.staged, "render", render)
    monkeypatch.setattr(actor_module, "encode_mp4", encode)
    outcomes = {}
    threads = [threading.Thread(target=call, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(o.ok for o in outcomes.values()), [o.error_message for o in outcomes.values()]
    assert max(most_alive) == 2, f"{max(most_alive)} clips on the actor at once"
    # every outcome has the actor's totals so far; the latest counts each job's model stages once
    latest = max((o.accelerator for o in outcomes.values()), key=lambda a: a["wall_s"])
    model_seconds = sum(o.timings[stage] for o in outcomes.values() for stage in MODEL_STAGES)
    assert latest["busy_s"] == pytest.approx(model_seconds, abs=1e-3)
    assert 0 < latest["busy_s"] <= latest["wall_s"]


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
