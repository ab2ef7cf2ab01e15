"""A run's driver holds no outcome and builds each RenderJob only when it is dispatched, so its
memory does not grow with the number of jobs (issue 21; benchmarks/scale.py measures the RSS).
Objects are counted, not bytes: a count is exact on any machine."""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
from types import SimpleNamespace

from catalog import Store
from flows.budget import BudgetGuard
from flows.collect import RunRecord, collect
from flows.plan import PlannedJob
from flows.progress import Progress, RunTotals
from flows.publish import version_entries
from flows.render_stream import RenderStream
from flows.run_ledger import RunLedger
from horse_actors import RenderJob, RenderOutcome

JOBS, CHUNK = 40, 10


def live(kind: type) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is kind)


def planned(i: int) -> PlannedJob:
    return PlannedJob("spring", f"s{i:03d}", "en-16x9-t1", "en", "16:9", 1, 7, "256p", 1.0, 256, 144,
                      "rain on a window", f"{i + 1:064x}")


class OneSlotActors:
    """Stands in for the pool's actors (there is no GPU here): renders a job by storing a tiny
    blob, and takes the next only once the flow has collected the last (one slot, so the count
    below is exact). Counts the RenderJobs alive as it takes the last job of each chunk."""

    def __init__(self, store: Store, ledger: RunLedger):
        self.store, self.ledger = store, ledger
        self.render_jobs_alive: list[int] = []

    def stream(self, jobs, on_outcome, cancel_event: threading.Event, admit=None) -> int:
        for done, job in enumerate(jobs):
            if done % CHUNK == CHUNK - 1:
                self.render_jobs_alive.append(live(RenderJob))
            blob = self.store.put_blob(job.render_key.encode(), ext="mp4")
            outcome = RenderOutcome(job.render_key, "ok", blob_uri=blob.uri, sha256=blob.sha256, bytes=blob.bytes)
            on_outcome(outcome)
            while self.ledger.count <= done and not cancel_event.is_set():
                time.sleep(0.001)
        return done + 1


def test_the_collect_path_holds_no_outcome_and_builds_render_jobs_as_actors_take_them(tmp_store):
    store = Store(tmp_store)
    todo = [planned(i) for i in range(JOBS)]
    run = RunRecord(str(uuid.uuid4()), "render_campaign", "tiny", ({"uri": "m", "version": "1"},), ("spring",))
    totals, outcomes_alive = RunTotals(planned=JOBS), []

    def commit(receipts: list[dict], number: int) -> None:  # the flow's index-chunk task, without Prefect
        store.index.commit(receipts, run_id=run.run_id)
        outcomes_alive.append(live(RenderOutcome))

    with RunLedger() as ledger:
        actors = OneSlotActors(store, ledger)
        to_job = lambda job: RenderJob(job.render_key, None, job.campaign_id, job.shot_id, job.variant)  # noqa: E731
        with RenderStream(actors, todo, to_job) as stream:
            failures = collect(stream.outcomes(), CHUNK, store, run, totals, Progress(None, "test"),
                               BudgetGuard([], SimpleNamespace(job_seconds={}), []), ledger, commit,
                               logging.getLogger("test"))
        # What the version is published from: every job, ok, with its clip.
        entries = version_entries(SimpleNamespace(jobs=todo, cached={}, kept=[]), ledger.fields)["spring"]
        outputs = list(ledger.outputs())

    assert (failures, totals.rendered, len(outcomes_alive)) == ([], JOBS, JOBS // CHUNK)
    assert len(store.index.to_arrow("spring")) == JOBS
    assert [e["status"] for e in entries] == ["ok"] * JOBS and all(e["blob_uri"] for e in entries)
    assert [o["uri"] for o in outputs] == [e["blob_uri"] for e in entries]
    # At every index commit, at most the outcome in hand (and the one the actor just sent) is alive,
    # never the chunks collected before it.
    assert max(outcomes_alive) <= 2, outcomes_alive
    # A RenderJob exists from when an actor takes it until its outcome: never the whole plan.
    assert max(actors.render_jobs_alive) <= 2, actors.render_jobs_alive
