"""RenderPool: one resident RenderActor per GPU and our own `ray.wait` scheduler.

Why not ray.util.ActorPool or Ray Data (research/orchestration.md A6, R1): we need a deadline per
job (kill and replace a hung actor), failure classes that decide retries, at most two calls in
flight per actor, cooperative cancel and a callback per outcome. Ray's own restart machinery is
off (max_restarts=0, max_task_retries=0): a replaced actor is a new actor, so every retry and
every model load is visible here and bounded by PoolConfig.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import ray
from ray.exceptions import RayActorError, TaskCancelledError

from .actor import RenderActor
from .cluster import connect
from .jobs import (ACTOR_DIED, CANCELLED, CANCELLED_CLASS, DEADLINE_EXCEEDED, FAILED, NO_ACTORS,
                   RenderJob, RenderOutcome, classify, failed)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolConfig:
    model: str                        # "tiny" or a checkpoint folder (HappyHorsePipeline.from_pretrained)
    store_url: str                    # catalog Store URL; every actor writes blobs there
    storage_options: dict | None = None
    num_actors: int | None = None     # None: one per GPU in the cluster (1 in cpu_mode)
    gpus_per_actor: float = 1.0
    cpus_per_actor: float = 1.0
    cpu_mode: bool = False            # actors ask for no GPU (tiny preset on CPU-only clusters)
    max_in_flight_per_actor: int = 2  # one rendering + one queued, so the GPU never waits for us
    job_deadline_s: float = 1800.0    # per attempt, counted from when the job reaches the head of its actor's queue
    max_retries: int = 2              # extra attempts for retryable failures (crash, hang, unknown errors)
    ray_address: str | None = None    # None: private loopback cluster; "auto" or "host:port": join one
    device: str | None = None         # None: cuda when torch sees one and not cpu_mode, else cpu
    dtype: str | None = None          # torch dtype name for checkpoints, e.g. "bfloat16"
    offload: bool = False
    tiny_seed: int = 0
    warmup: bool = True
    warmup_seconds: float = 1.0
    oom_ladder: tuple[str, ...] = ("tiled_decode", "lower_sr")
    max_actor_restarts: int = 3       # replacements per actor slot before the slot is given up
    actor_start_timeout_s: float = 900.0  # load + warm-up; also catches GPUs that never free up
    cancel_grace_s: float = 3.0       # how long running jobs get to stop cooperatively on cancel
    poll_s: float = 0.2
    crf: int = 18
    preset: str = "veryfast"
    scratch_dir: str | None = None    # node-local dir for temp mp4s (default: the system temp dir)
    # Test/drill hooks, off by default; see RenderActor._inject_faults / _inject_oom.
    fault_injection: dict | None = None

    def __post_init__(self):
        if self.max_in_flight_per_actor < 1:
            raise ValueError("max_in_flight_per_actor must be >= 1")
        if self.max_retries < 0 or self.max_actor_restarts < 0:
            raise ValueError("max_retries and max_actor_restarts must be >= 0")


@dataclass
class _Task:
    index: int
    job: RenderJob
    attempt: int = 1
    history: list = field(default_factory=list)  # summaries of earlier failed attempts


@dataclass
class _Slot:
    """One actor position (one GPU). Its actor is replaced when it crashes or hangs."""

    index: int
    actor: Any = None
    ready_ref: Any = None             # stats() call that completes when the actor has loaded
    started_at: float = 0.0
    stats: dict | None = None
    restarts: int = 0
    calls: deque = field(default_factory=deque)  # _Call, in submission (= execution) order
    head_since: float = 0.0

    @property
    def ready(self) -> bool:
        return self.actor is not None and self.ready_ref is None

    @property
    def starting(self) -> bool:
        return self.actor is not None and self.ready_ref is not None


@dataclass
class _Call:
    task: _Task
    slot: _Slot
    ref: Any
    call_id: str


class RenderPool:
    """`with RenderPool(config) as pool: outcomes = pool.run(jobs)`; usable from any script."""

    def __init__(self, config: PoolConfig):
        self.config = config
        self._slots: list[_Slot] = []
        self._remote = None
        self._running = threading.Lock()
        self.replacements = 0  # actors started to replace a crashed, hung or failed one

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout_s: float | None = None) -> list[dict]:
        """Create the actors (if not yet) and wait until each has loaded and warmed its model."""
        self._ensure_actors()
        deadline = time.monotonic() + (timeout_s or self.config.actor_start_timeout_s)
        while any(s.starting for s in self._slots):
            refs = [s.ready_ref for s in self._slots if s.starting]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=max(0.0, deadline - time.monotonic()))
            for ref in ready:
                self._on_ready(ref)
            if time.monotonic() >= deadline and any(s.starting for s in self._slots):
                self.shutdown()
                raise TimeoutError("render actors did not become ready in time (missing GPUs?)")
        if not any(s.ready for s in self._slots):
            raise RuntimeError("no render actor could be started")
        return self.actor_stats()

    def _ensure_actors(self) -> None:
        if self._slots:
            return
        cfg = self.config
        info = connect(cfg.ray_address)
        n = cfg.num_actors
        if n is None:
            n = 1 if cfg.cpu_mode else int(info["gpus"] // cfg.gpus_per_actor)
        if n < 1:
            raise RuntimeError(f"no GPUs in the Ray cluster ({info}); set cpu_mode=True or num_actors")
        self._remote = ray.remote(RenderActor).options(
            num_gpus=0 if cfg.cpu_mode else cfg.gpus_per_actor,
            num_cpus=cfg.cpus_per_actor,
            max_restarts=0,
            max_task_retries=0,
            max_concurrency=1,
        )
        self._slots = [_Slot(index=i) for i in range(n)]
        for slot in self._slots:
            self._launch(slot)

    def _launch(self, slot: _Slot) -> None:
        slot.actor = self._remote.remote(self.config)
        slot.ready_ref = slot.actor.stats.remote()
        slot.started_at = time.monotonic()
        slot.stats = None
        slot.calls.clear()

    def _on_ready(self, ref, run: "_Run | None" = None) -> None:
        slot = next((s for s in self._slots if s.ready_ref == ref), None)
        if slot is None:
            return
        try:
            slot.stats = ray.get(ref)
            slot.ready_ref = None
            log.info("actor slot %d ready: %s", slot.index, slot.stats)
        except Exception as exc:  # noqa: BLE001 - the constructor failed (bad checkpoint, no memory)
            if run is None:
                self.shutdown()
                raise RuntimeError(f"render actor failed to start: {_first_line(exc)}") from exc
            run.lose_slot(slot, "ActorStartFailed", _first_line(exc))

    def actor_stats(self) -> list[dict]:
        """stats() of every live actor: ids, pid, load_count, load/warm-up seconds, memory, renders."""
        live = [s for s in self._slots if s.ready]
        return ray.get([s.actor.stats.remote() for s in live]) if live else []

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Kill every actor and wait until Ray reports them dead, so their GPUs are free."""
        actors = [s.actor for s in self._slots if s.actor is not None]
        self._slots = []
        for actor in actors:
            ray.kill(actor, no_restart=True)
        probes = [a.stats.remote() for a in actors]
        end = time.monotonic() + timeout_s
        for probe in probes:
            try:
                ray.get(probe, timeout=max(0.1, end - time.monotonic()))
            except RayActorError:
                continue  # dead, as intended
            except Exception as exc:  # noqa: BLE001 - shutdown must not raise for a slow death
                log.warning("actor not confirmed dead on shutdown: %r", exc)

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
    ) -> list[RenderOutcome]:
        """Render every job; return one final outcome per job, in input order.

        Cancel (cancel_event set, or KeyboardInterrupt) cancels queued jobs, asks running ones to
        stop, waits at most `cancel_grace_s`, then kills every actor; the pool can be run again
        afterwards (it starts new actors).
        """
        jobs = list(jobs)
        keys = [j.render_key for j in jobs]
        if len(set(keys)) != len(keys):
            raise ValueError("render keys must be unique within one run")
        if not jobs:
            return []
        if not self._running.acquire(blocking=False):
            raise RuntimeError("RenderPool.run is already running; call it from one thread at a time")
        try:
            self._ensure_actors()
            run = _Run(self, jobs, on_outcome)
            try:
                while not run.done:
                    if cancel_event is not None and cancel_event.is_set():
                        run.cancel()
                        break
                    run.step()
            except BaseException:
                run.cancel()
                raise
            return run.outcomes()
        finally:
            self._running.release()


class _Run:
    """State of one `RenderPool.run` call."""

    def __init__(self, pool: RenderPool, jobs: list[RenderJob], on_outcome):
        self.pool, self.cfg = pool, pool.config
        self.pending: deque[_Task] = deque(_Task(i, job) for i, job in enumerate(jobs))
        self.final: dict[int, RenderOutcome] = {}
        self.calls: dict[Any, _Call] = {}
        self.on_outcome = on_outcome
        self.n = len(jobs)
        self.cancelling = False

    @property
    def done(self) -> bool:
        return len(self.final) == self.n

    def outcomes(self) -> list[RenderOutcome]:
        return [self.final[i] for i in range(self.n)]

    def step(self) -> None:
        self._dispatch()
        self._enforce_deadlines()
        slots = self.pool._slots
        if not self.calls and not any(s.ready or s.starting for s in slots):
            for task in list(self.pending):
                self._finish(task, failed(task.job, NO_ACTORS, "every actor slot used up its restarts",
                                          retryable=True, attempt=task.attempt))
            self.pending.clear()
            return
        waitables = list(self.calls) + [s.ready_ref for s in slots if s.starting]
        ready, rest = ray.wait(waitables, num_returns=1, timeout=self.cfg.poll_s)
        if ready and rest:
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        for ref in ready:
            if ref in self.calls:
                self._on_result(ref)
            else:
                self.pool._on_ready(ref, run=self)

    # dispatch: least-loaded ready actor first, never more than max_in_flight_per_actor each
    def _dispatch(self) -> None:
        while self.pending:
            open_slots = [s for s in self.pool._slots
                          if s.ready and len(s.calls) < self.cfg.max_in_flight_per_actor]
            if not open_slots:
                return
            slot = min(open_slots, key=lambda s: len(s.calls))
            task = self.pending.popleft()
            call_id = uuid.uuid4().hex
            ref = slot.actor.render.remote(task.job, task.attempt, time.time(), call_id)
            if not slot.calls:
                slot.head_since = time.monotonic()
            call = _Call(task, slot, ref, call_id)
            slot.calls.append(call)
            self.calls[ref] = call

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for slot in list(self.pool._slots):
            if slot.ready and slot.calls:
                job = slot.calls[0].task.job
                limit = job.deadline_s or self.cfg.job_deadline_s
                if now - slot.head_since > limit:
                    log.warning("%s passed its %.0fs deadline on actor %s; replacing the actor",
                                job.render_key, limit, slot.index)
                    self.lose_slot(slot, DEADLINE_EXCEEDED, f"no result within the {limit:g}s deadline")
            elif slot.starting and now - slot.started_at > self.cfg.actor_start_timeout_s:
                self.lose_slot(slot, "ActorStartTimeout", "actor did not load in time")

    def _on_result(self, ref) -> None:
        call = self.calls.pop(ref)
        slot = call.slot
        try:
            outcome = ray.get(ref)
        except RayActorError as exc:
            self.calls[ref] = call  # lose_slot settles every call of the slot, this one included
            self.lose_slot(slot, ACTOR_DIED, _first_line(exc))
            return
        except TaskCancelledError:
            outcome = failed(call.task.job, CANCELLED_CLASS, "cancelled", retryable=False,
                             attempt=call.task.attempt, status=CANCELLED)
        except Exception as exc:  # noqa: BLE001 - an error that escaped RenderActor.render
            cause = getattr(exc, "cause", None) or exc
            error_class, retryable = classify(cause)
            outcome = failed(call.task.job, error_class, _first_line(exc), retryable=retryable,
                             attempt=call.task.attempt)
        was_head = slot.calls and slot.calls[0] is call
        if call in slot.calls:
            slot.calls.remove(call)
        if was_head:
            slot.head_since = time.monotonic()
        self._settle(call.task, outcome)

    def lose_slot(self, slot: _Slot, error_class: str, message: str) -> None:
        """The slot's actor crashed, hung or failed to start: kill it, charge the running job one
        attempt, requeue the jobs queued behind it (uncharged), and start a replacement."""
        calls = list(slot.calls)
        for call in calls:
            self.calls.pop(call.ref, None)
        ids = slot.stats or {}
        if slot.actor is not None:
            ray.kill(slot.actor, no_restart=True)
        slot.actor, slot.ready_ref = None, None
        slot.calls.clear()
        for call in reversed(calls[1:]):
            if self.cancelling:
                self._finish(call.task, _cancelled(call.task))
            else:
                self.pending.appendleft(call.task)
        if calls:
            head = calls[0].task
            self._settle(head, failed(
                head.job, error_class, message, retryable=True, attempt=head.attempt,
                actor_id=ids.get("actor_id"), node_id=ids.get("node_id"), pid=ids.get("pid"),
                gpu_ids=ids.get("gpu_ids", [])))
        if not self.cancelling and slot.restarts < self.cfg.max_actor_restarts:
            slot.restarts += 1
            self.pool.replacements += 1
            self.pool._launch(slot)
            log.info("actor slot %d: started replacement %d", slot.index, slot.restarts)

    def _settle(self, task: _Task, outcome: RenderOutcome) -> None:
        if (outcome.status == FAILED and outcome.retryable and not self.cancelling
                and task.attempt <= self.cfg.max_retries):
            log.info("%s attempt %d failed (%s); retrying", task.job.render_key, task.attempt,
                     outcome.error_class)
            summary = {"attempt": task.attempt, "error_class": outcome.error_class,
                       "error_message": outcome.error_message, "actor_id": outcome.actor_id}
            self.pending.appendleft(_Task(task.index, task.job, task.attempt + 1, [*task.history, summary]))
            return
        self._finish(task, outcome)

    def _finish(self, task: _Task, outcome: RenderOutcome) -> None:
        outcome.earlier_attempts = list(task.history)
        self.final[task.index] = outcome
        if self.on_outcome is not None:
            try:
                self.on_outcome(outcome)
            except Exception:  # noqa: BLE001 - a progress hook must not stop the run
                log.exception("on_outcome callback failed for %s", outcome.render_key)

    def cancel(self) -> None:
        """Cancel queued work, give running work `cancel_grace_s` to stop, then kill all actors."""
        self.cancelling = True
        for task in list(self.pending):
            self._finish(task, _cancelled(task))
        self.pending.clear()
        for ref in list(self.calls):
            ray.cancel(ref)  # queued calls are dropped; running ones see is_canceled()
        # `finished` runs once the actor is idle again, and reports jobs that completed anyway.
        barriers = [s.actor.finished.remote([c.call_id for c in s.calls])
                    for s in self.pool._slots if s.ready and s.calls]
        really: dict[str, RenderOutcome] = {}
        if barriers:
            ready, _ = ray.wait(barriers, num_returns=len(barriers), timeout=self.cfg.cancel_grace_s)
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
        self.pool.shutdown()


def _cancelled(task: _Task) -> RenderOutcome:
    return failed(task.job, CANCELLED_CLASS, "cancelled before it finished", retryable=False,
                  attempt=task.attempt, status=CANCELLED)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]
