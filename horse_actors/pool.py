"""RenderPool: one resident RenderActor per GPU and our own `ray.wait` scheduler.

Why not ray.util.ActorPool or Ray Data (research/orchestration.md A6, R1): we need a deadline per
job (kill and replace a hung actor), failure classes that decide retries, at most two calls in
flight per actor, cooperative cancel and a callback per outcome. Ray's own restart machinery is
off (max_restarts=0, max_task_retries=0): a replaced actor is a new actor, so every retry and
every model load is visible here and bounded by Scheduling.

What `run` guarantees:
- exactly one final outcome per job, returned in input order (and passed to `on_outcome` once);
  `stream` gives the same outcomes to `on_outcome` only and keeps none, taking jobs from its
  iterable as actors free up, so a run of 100k jobs holds no more than the jobs in flight (and,
  for a list, their dispatch order); it orders and admits jobs exactly as `run` does;
- jobs are dispatched highest `RenderJob.priority` first, equals in input order (retries and
  jobs requeued from a lost actor go first: they were dispatched before);
- `admit(job)`, when given, is asked before each dispatch; after its first "no" the run takes no
  new job: the jobs on actors finish as usual, every other one ends `cancelled` (NOT_ADMITTED)
  and was never started (a budget stop, never a half-written shot);
- at most one render per attempt: a job is on one actor at a time, and its next attempt is
  dispatched only after the previous one ended, with a failure outcome or with its actor lost
  (crash, hang past its deadline, failed start). The job at the head of a lost actor's queue is
  charged an attempt even if it had not started yet; the jobs queued behind it had not started
  and are requeued uncharged (with `Scheduling.overlap` every call in flight may have started,
  so each is charged). A call of a lost actor that had already returned its outcome keeps that
  outcome (with overlap, the job next to the one that crashed or hung has often finished). So a
  job that ends ok was rendered at least once, and more than
  once only after a failed or lost attempt (an actor killed after storing a clip but before
  answering means that clip is rendered again: at-least-once rendering). Blobs are
  content-addressed, so a repeated render adds no second file;
- publishing each job's result exactly once (receipts, index, versions) is not the pool's job
  but its caller's (flows/).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import ray
from ray.exceptions import RayActorError, TaskCancelledError

from .actor import RenderActor
from .config import PoolConfig, Scheduling
from .jobs import (ACTOR_DIED, CANCELLED, CANCELLED_CLASS, FAILED, NO_ACTORS, NOT_ADMITTED, RenderJob, RenderOutcome,
                   classify, failed, sorted_stages_run)
from .slots import ActorSlots, ActorStartFailed, Call, Slot, first_line

log = logging.getLogger(__name__)


@dataclass
class _Task:
    index: int
    job: RenderJob
    attempt: int = 1
    history: list = field(default_factory=list)  # summaries of earlier failed attempts


class RenderPool:
    """`with RenderPool(config) as pool: outcomes = pool.run(jobs)`; usable from any script.

    `actor_class` is what each actor runs: RenderActor, or a subclass with the same
    constructor and methods (tests use one that injects faults)."""

    def __init__(self, config: PoolConfig, actor_class: type = RenderActor):
        self.config = config
        self._slots = ActorSlots(config, actor_class)
        self._running = threading.Lock()

    @property
    def replacements(self) -> int:
        """Actors started to replace a crashed, hung or failed one."""
        return self._slots.replacements

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout_s: float | None = None) -> list[dict]:
        """Create the actors (if not yet) and wait until each has loaded and warmed its model."""
        self._slots.ensure_started()
        self._slots.wait_until_ready(timeout_s or self.config.scheduling.actor_start_timeout_s)
        return self.actor_stats()

    def actor_stats(self) -> list[dict]:
        """stats() of every live actor: ids, pid, load_count, load/warm-up seconds, memory, renders."""
        return self._slots.stats()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Kill every actor and wait until Ray reports them dead, so their GPUs are free."""
        self._slots.shutdown(timeout_s)

    def __enter__(self) -> "RenderPool":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # -- the scheduler ---------------------------------------------------------------------
    def run(
        self,
        jobs: Iterable[RenderJob],
        on_outcome: Callable[[RenderOutcome], None] | None = None,
        cancel_event: threading.Event | None = None,
        admit: Callable[[RenderJob], bool] | None = None,
    ) -> list[RenderOutcome]:
        """Render every job; return one final outcome per job, in input order.

        `admit(job)` is asked just before each dispatch (retries too); once it says no, the
        run stops taking new jobs and lets the ones on actors finish (see the module doc).

        Cancel (cancel_event set, or KeyboardInterrupt) cancels queued jobs, asks running ones to
        stop, waits at most `cancel_grace_s`, then kills every actor; the pool can be run again
        afterwards (it starts new actors).
        """
        jobs = list(jobs)
        keys = [j.render_key for j in jobs]
        if len(set(keys)) != len(keys):
            raise ValueError("render keys must be unique within one run")
        final: list[RenderOutcome | None] = [None] * len(jobs)

        def keep(index: int, outcome: RenderOutcome) -> None:
            final[index] = outcome

        self._drive(jobs, keep, on_outcome, cancel_event, admit)
        return final  # type: ignore[return-value]  # every slot filled: one final outcome per job

    def stream(
        self,
        jobs: Iterable[RenderJob],
        on_outcome: Callable[[RenderOutcome], None],
        cancel_event: threading.Event | None = None,
        admit: Callable[[RenderJob], bool] | None = None,
    ) -> int:
        """`run` for runs of any size: each final outcome goes to `on_outcome` and is not kept;
        jobs are taken from `jobs` (an iterator is fine) only when an actor has room for one, so
        the driver's memory does not grow with the number of jobs. Render keys must be unique
        (not checked: checking would keep every key). On cancel, or when every actor slot is used
        up, the jobs not yet taken are drawn from `jobs` to get their outcome. Returns how many
        outcomes were given.

        Priority and `admit` work as in `run`: a list (or other sequence) is dispatched highest
        `RenderJob.priority` first, equals in input order; a one-pass iterator cannot be reordered
        without holding it whole, so it must yield jobs in dispatch order already (a plan's jobs
        are: `make_plan` sorts them)."""
        count = 0

        def counted(index: int, outcome: RenderOutcome) -> None:
            nonlocal count
            count += 1

        self._drive(jobs, counted, on_outcome, cancel_event, admit)
        return count

    def _drive(self, jobs: Iterable[RenderJob], record: Callable[[int, RenderOutcome], None],
               on_outcome: Callable[[RenderOutcome], None] | None, cancel_event: threading.Event | None,
               admit: Callable[[RenderJob], bool] | None) -> None:
        if not self._running.acquire(blocking=False):
            raise RuntimeError("RenderPool.run is already running; call it from one thread at a time")
        try:
            run = _Run(self._slots, self.config.scheduling, _dispatch_order(jobs), record, on_outcome, admit)
            if run.done:
                return
            self._slots.ensure_started()
            try:
                while not run.done:
                    if cancel_event is not None and cancel_event.is_set():
                        run.cancel()
                        break
                    run.step()
            except BaseException:
                run.cancel()
                raise
        finally:
            self._running.release()


def _dispatch_order(jobs: Iterable[RenderJob]) -> Iterator[tuple[int, RenderJob]]:
    """(input index, job) highest `priority` first, equals in input order (a stable sort of the
    indexes only); an iterator that is not a sequence is taken as it comes (see `stream`)."""
    if not isinstance(jobs, Sequence):
        return enumerate(jobs)
    order = sorted(range(len(jobs)), key=lambda i: jobs[i].priority, reverse=True)
    return ((i, jobs[i]) for i in order)


class _Run:
    """State of one `RenderPool.run`/`stream` call: the jobs not yet taken, the queue of retried
    and requeued ones, the calls in flight, and what a failure means (retry, requeue, give up).
    Final outcomes go to `record` (and `on_outcome`); none is kept here. Actors are reached only
    through `slots`."""

    def __init__(self, slots: ActorSlots, sched: Scheduling, source: Iterator[tuple[int, RenderJob]],
                 record: Callable[[int, RenderOutcome], None], on_outcome,
                 admit: Callable[[RenderJob], bool] | None = None):
        self.slots, self.sched = slots, sched
        self.source = source  # (input index, job) in dispatch order: _dispatch_order
        self.pending: deque[_Task] = deque()  # retried and requeued tasks, ahead of new jobs
        self.admit = admit
        self.taking_jobs = True
        self.calls: dict[Any, Call] = {}
        self.record, self.on_outcome = record, on_outcome
        self.taken = self.finished = 0
        self.cancelling = False
        self._peek()

    def _peek(self) -> None:
        """Take the next job from the source into `pending` if it is empty (None at the end)."""
        if not self.pending:
            task = next((_Task(i, job) for i, job in self.source), None)
            if task is not None:
                self.taken += 1
                self.pending.append(task)

    def _rest(self) -> Iterator[_Task]:
        """Every task not dispatched: the queue, then the jobs never taken from the source."""
        while self.pending:
            yield self.pending.popleft()
        for i, job in self.source:
            self.taken += 1
            yield _Task(i, job)

    @property
    def done(self) -> bool:
        return not self.pending and not self.calls and self.finished == self.taken

    def step(self) -> None:
        self._dispatch()
        for slot, error_class, message in self.slots.overdue(self.sched.job_deadline_s):
            self.lose_slot(slot, error_class, message)
        if not self.calls and not self.slots.any_alive:
            for task in self._rest():
                self._finish(task, failed(task.job, NO_ACTORS, "every actor slot used up its restarts",
                                          retryable=True, attempt=task.attempt))
            return
        waitables = list(self.calls) + self.slots.starting_refs()
        ready, rest = ray.wait(waitables, num_returns=1, timeout=self.sched.poll_s)
        if ready and rest:
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        for ref in ready:
            if ref in self.calls:
                self._on_result(ref)
                continue
            try:
                self.slots.mark_ready(ref)
            except ActorStartFailed as exc:
                self.lose_slot(exc.slot, "ActorStartFailed", str(exc))

    # dispatch: an actor holding the job's adapter, else the least-loaded ready actor; never more
    # than max_in_flight_per_actor each
    def _dispatch(self) -> None:
        while self.pending:
            slot = self.slots.least_loaded(self.sched.max_in_flight_per_actor, self.pending[0].job.adapter_sha256)
            if slot is None:
                return
            if self.taking_jobs and self.admit is not None and not self.admit(self.pending[0].job):
                self.taking_jobs = False
            if not self.taking_jobs:
                skipped = 0
                for task in self._rest():  # the queue and every job not yet taken from the source
                    self._finish(task, failed(task.job, NOT_ADMITTED, "not dispatched: the run stopped taking new jobs",
                                              retryable=False, attempt=task.attempt, status=CANCELLED))
                    skipped += 1
                log.info("no longer taking new jobs: %d not dispatched", skipped)
                return
            call = self.slots.dispatch(slot, self.pending.popleft())
            self.calls[call.ref] = call
            self._peek()

    def _on_result(self, ref) -> None:
        call = self.calls.pop(ref)
        try:
            outcome = ray.get(ref)
        except RayActorError as exc:
            self.calls[ref] = call  # lose_slot settles every call of the slot, this one included
            self.lose_slot(call.slot, ACTOR_DIED, first_line(exc))
            return
        except TaskCancelledError:
            outcome = failed(call.task.job, CANCELLED_CLASS, "cancelled", retryable=False,
                             attempt=call.task.attempt, status=CANCELLED)
        except Exception as exc:  # noqa: BLE001 - an error that escaped RenderActor.render
            cause = getattr(exc, "cause", None) or exc
            error_class, retryable = classify(cause)
            outcome = failed(call.task.job, error_class, first_line(exc), retryable=retryable,
                             attempt=call.task.attempt)
        self.slots.settled(call)
        self._settle(call.task, outcome)

    def lose_slot(self, slot: Slot, error_class: str, message: str) -> None:
        """The slot's actor crashed, hung or failed to start: it is killed (and replaced while
        restarts are left), the calls that had already answered keep their outcome, the running
        job is charged one attempt (with overlap: every call in flight), and the jobs queued
        behind it, never started, are requeued uncharged."""
        ids = slot.stats or {}
        answered = _answered(list(slot.calls))
        calls = self.slots.lose(slot, replace=not self.cancelling)
        for call in calls:
            self.calls.pop(call.ref, None)
        for call in [c for c in calls if c.ref in answered]:
            self._settle(call.task, answered[call.ref])
        calls = [c for c in calls if c.ref not in answered]
        started = len(calls) if self.sched.overlap else 1     # calls that may have begun rendering
        for call in reversed(calls[started:]):
            if self.cancelling:
                self._finish(call.task, _cancelled(call.task))
            else:
                self.pending.appendleft(call.task)
        for call in reversed(calls[:started]):
            self._settle(call.task, failed(
                call.task.job, error_class, message, retryable=True, attempt=call.task.attempt,
                actor_id=ids.get("actor_id"), node_id=ids.get("node_id"), pid=ids.get("pid"),
                gpu_ids=ids.get("gpu_ids", [])))

    def _settle(self, task: _Task, outcome: RenderOutcome) -> None:
        if (outcome.status == FAILED and outcome.retryable and not self.cancelling
                and task.attempt <= self.sched.max_retries):
            log.info("%s attempt %d failed (%s); retrying", task.job.render_key, task.attempt,
                     outcome.error_class)
            summary = {"attempt": task.attempt, "error_class": outcome.error_class,
                       "error_message": outcome.error_message, "actor_id": outcome.actor_id,
                       "stages_run": outcome.stages_run}
            self.pending.appendleft(_Task(task.index, task.job, task.attempt + 1, [*task.history, summary]))
            return
        self._finish(task, outcome)

    def _finish(self, task: _Task, outcome: RenderOutcome) -> None:
        outcome.earlier_attempts = list(task.history)
        # the stages of every attempt this run saw (a lost actor's attempt reports none)
        outcome.stages_run = sorted_stages_run(*(h["stages_run"] for h in task.history), outcome.stages_run)
        self.finished += 1
        self.record(task.index, outcome)
        if self.on_outcome is not None:
            try:
                self.on_outcome(outcome)
            except Exception:  # noqa: BLE001 - a progress hook must not stop the run
                log.exception("on_outcome callback failed for %s", outcome.render_key)

    def cancel(self) -> None:
        """Cancel queued work, give running work `cancel_grace_s` to stop, then kill all actors."""
        self.cancelling = True
        for task in self._rest():
            self._finish(task, _cancelled(task))
        for ref in list(self.calls):
            ray.cancel(ref)  # queued calls are dropped; running ones see is_canceled()
        barriers = self.slots.ask_finished()
        really: dict[str, RenderOutcome] = {}
        if barriers:
            ready, _ = ray.wait(barriers, num_returns=len(barriers), timeout=self.sched.cancel_grace_s)
            for ref in ready:
                try:
                    really.update(ray.get(ref))
                except Exception:  # noqa: BLE001 - the actor died meanwhile: nothing to report
                    pass
        for ref, call in list(self.calls.items()):
            outcome = really.get(call.call_id)
            if outcome is None:
                try:
                    outcome = ray.get(ref, timeout=0)  # it may have finished before the cancel
                except Exception:  # noqa: BLE001 - cancelled, not ready or actor gone
                    outcome = _cancelled(call.task)
            self._finish(call.task, outcome)
        self.calls.clear()
        self.slots.shutdown()


def _answered(calls: list[Call]) -> dict[Any, RenderOutcome]:
    """The outcomes that calls of a failing actor had already returned, by ref (a crashed call's
    ref raises and is left out)."""
    if not calls:
        return {}
    ready, _ = ray.wait([c.ref for c in calls], num_returns=len(calls), timeout=0)
    found = {}
    for ref in ready:
        try:
            outcome = ray.get(ref, timeout=0)
        except Exception:  # noqa: BLE001 - the call died with its actor
            continue
        if isinstance(outcome, RenderOutcome):
            found[ref] = outcome
    return found


def _cancelled(task: _Task) -> RenderOutcome:
    return failed(task.job, CANCELLED_CLASS, "cancelled before it finished", retryable=False,
                  attempt=task.attempt, status=CANCELLED)
