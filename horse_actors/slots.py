"""ActorSlots: the pool's render actors, one per slot (one GPU), and what each is running.

The only code that creates, calls and kills render actors. The scheduler (`pool._Run`)
decides which job goes where and what a failure means; it asks this object to dispatch a
job, to report which actors are ready, overdue or lost, and to replace or stop them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError

from .cluster import connect
from .config import PoolConfig
from .jobs import DEADLINE_EXCEEDED

log = logging.getLogger(__name__)

RENDER_GROUP = "render"   # the Ray concurrency group of overlapping render calls (Scheduling.overlap)


@dataclass
class Slot:
    """One actor position (one GPU). Its actor is replaced when it crashes or hangs."""

    index: int
    actor: Any = None
    ready_ref: Any = None             # stats() call that completes when the actor has loaded
    started_at: float = 0.0
    stats: dict | None = None
    restarts: int = 0
    calls: deque = field(default_factory=deque)  # Call, in submission (= execution) order
    head_since: float = 0.0           # when the call at the head of `calls` started to run
    # brand adapters sent to this actor, least recently used first: what its model holds once
    # those calls ran (the actor keeps ModelSpec.adapter_capacity of them, LRU, as tracked here)
    adapters: OrderedDict = field(default_factory=OrderedDict)

    @property
    def ready(self) -> bool:
        return self.actor is not None and self.ready_ref is None

    @property
    def starting(self) -> bool:
        return self.actor is not None and self.ready_ref is not None


@dataclass
class Call:
    """One `render` call in flight: the scheduler's task (anything with .job and .attempt)."""

    task: Any
    slot: Slot
    ref: Any
    call_id: str


class ActorStartFailed(RuntimeError):
    """An actor's constructor raised (bad checkpoint, no memory); `slot` holds the dead actor."""

    def __init__(self, slot: Slot, message: str):
        super().__init__(message)
        self.slot = slot


class ActorSlots:
    def __init__(self, config: PoolConfig, actor_class: type):
        self._config = config
        self._actor_class = actor_class
        self._remote = None
        self._slots: list[Slot] = []
        self.replacements = 0  # actors started to replace a crashed, hung or failed one

    # -- what the scheduler reads ----------------------------------------------------------
    def least_loaded(self, max_calls: int, adapter: str | None = None) -> Slot | None:
        """The ready slot with the fewest calls in flight, if it has fewer than `max_calls`;
        with a brand adapter (sha256), one that holds it first: switching to a held adapter is a
        flag flip, loading one is a read and an injection."""
        open_slots = [s for s in self._slots if s.ready and len(s.calls) < max_calls]
        holders = [s for s in open_slots if adapter is not None and adapter in s.adapters]
        return min(holders or open_slots, key=lambda s: len(s.calls), default=None)

    def starting_refs(self) -> list:
        """One ref per actor still loading; it completes when that actor is ready."""
        return [s.ready_ref for s in self._slots if s.starting]

    @property
    def any_alive(self) -> bool:
        return any(s.ready or s.starting for s in self._slots)

    def stats(self) -> list[dict]:
        """stats() of every ready actor: ids, pid, load_count, load/warm-up seconds, memory, renders."""
        live = [s for s in self._slots if s.ready]
        return ray.get([s.actor.stats.remote() for s in live]) if live else []

    def overdue(self, default_deadline_s: float) -> list[tuple[Slot, str, str]]:
        """(slot, error class, message) for each actor stuck on its head job past that job's
        deadline, or still loading past actor_start_timeout_s."""
        now, found = time.monotonic(), []
        for slot in self._slots:
            if slot.ready and slot.calls:
                job = slot.calls[0].task.job
                limit = job.deadline_s or default_deadline_s
                if now - slot.head_since > limit:
                    log.warning("%s passed its %.0fs deadline on actor %s; replacing the actor",
                                job.render_key, limit, slot.index)
                    found.append((slot, DEADLINE_EXCEEDED, f"no result within the {limit:g}s deadline"))
            elif slot.starting and now - slot.started_at > self._config.scheduling.actor_start_timeout_s:
                found.append((slot, "ActorStartTimeout", "actor did not load in time"))
        return found

    # -- lifecycle -------------------------------------------------------------------------
    def ensure_started(self) -> None:
        """Connect to Ray and create one actor per slot, unless they exist (not waiting for them)."""
        if self._slots:
            return
        sched = self._config.scheduling
        info = connect(sched.ray_address)
        n = sched.num_actors
        if n is None:
            n = 1 if sched.cpu_mode else int(info["gpus"] // sched.gpus_per_actor)
        if n < 1:
            raise RuntimeError(f"no GPUs in the Ray cluster ({info}); set cpu_mode=True or num_actors")
        # With overlap, render calls get threads of their own; stats/finished keep the default one.
        # (Ray takes concurrency groups when the class is made remote, not in .options().)
        remote = ray.remote(concurrency_groups={RENDER_GROUP: sched.max_in_flight_per_actor}) \
            if sched.overlap else ray.remote
        self._remote = remote(self._actor_class).options(
            num_gpus=0 if sched.cpu_mode else sched.gpus_per_actor,
            num_cpus=sched.cpus_per_actor,
            max_restarts=0,
            max_task_retries=0,
            max_concurrency=1,
        )
        self._slots = [Slot(index=i) for i in range(n)]
        for slot in self._slots:
            self._launch(slot)

    def _launch(self, slot: Slot) -> None:
        cfg = self._config
        slot.actor = self._remote.remote(cfg.actor_model(), cfg.store, cfg.encoding)
        slot.ready_ref = slot.actor.stats.remote()
        slot.started_at = time.monotonic()
        slot.stats = None
        slot.calls.clear()
        slot.adapters.clear()  # a new actor holds none

    def mark_ready(self, ref) -> Slot | None:
        """Record the actor whose start `ref` reports, or raise ActorStartFailed."""
        slot = next((s for s in self._slots if s.starting and s.ready_ref == ref), None)
        if slot is None:
            return None
        try:
            slot.stats = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - the constructor failed
            raise ActorStartFailed(slot, first_line(exc)) from exc
        slot.ready_ref = None
        log.info("actor slot %d ready: %s", slot.index, slot.stats)
        return slot

    def wait_until_ready(self, timeout_s: float) -> None:
        """Block until every actor has loaded and warmed up; stop all and raise if one fails or is late."""
        deadline = time.monotonic() + timeout_s
        while refs := self.starting_refs():
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=max(0.0, deadline - time.monotonic()))
            try:
                for ref in ready:
                    self.mark_ready(ref)
            except ActorStartFailed as exc:
                self.shutdown()
                raise RuntimeError(f"render actor failed to start: {exc}") from exc
            if time.monotonic() >= deadline and self.starting_refs():
                self.shutdown()
                raise TimeoutError("render actors did not become ready in time (missing GPUs?)")
        if not any(s.ready for s in self._slots):
            raise RuntimeError("no render actor could be started")

    def lose(self, slot: Slot, replace: bool = True) -> list[Call]:
        """Kill the slot's actor (crashed, hung or failed to start) and return its calls, head
        first; start a replacement if `replace` and the slot has restarts left."""
        calls = list(slot.calls)
        if slot.actor is not None:
            ray.kill(slot.actor, no_restart=True)
        slot.actor, slot.ready_ref = None, None
        slot.calls.clear()
        if replace and slot.restarts < self._config.scheduling.max_actor_restarts:
            slot.restarts += 1
            self.replacements += 1
            self._launch(slot)
            log.info("actor slot %d: started replacement %d", slot.index, slot.restarts)
        return calls

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

    # -- calls -----------------------------------------------------------------------------
    def dispatch(self, slot: Slot, task: Any) -> Call:
        """Queue one render of `task.job` (attempt `task.attempt`) on the slot's actor."""
        call_id = uuid.uuid4().hex
        render = slot.actor.render
        if self._config.scheduling.overlap:
            render = render.options(concurrency_group=RENDER_GROUP)
        ref = render.remote(task.job, task.attempt, time.time(), call_id)
        if not slot.calls:
            slot.head_since = time.monotonic()
        call = Call(task, slot, ref, call_id)
        slot.calls.append(call)
        adapter = task.job.adapter_sha256
        if adapter is not None:
            slot.adapters[adapter] = True
            slot.adapters.move_to_end(adapter)
            while len(slot.adapters) > self._config.model.adapter_capacity:
                slot.adapters.popitem(last=False)
        return call

    def settled(self, call: Call) -> None:
        """The call has returned: the next one on its actor starts running now."""
        slot = call.slot
        was_head = slot.calls and slot.calls[0] is call
        if call in slot.calls:
            slot.calls.remove(call)
        if was_head:
            slot.head_since = time.monotonic()

    def ask_finished(self) -> list:
        """Refs that answer, once each busy actor is idle, which of its calls completed anyway
        (RenderActor.finished): `ray.get` of a cancelled call raises even when the job was stored."""
        return [s.actor.finished.remote([c.call_id for c in s.calls]) for s in self._slots if s.ready and s.calls]


def first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"[:500]
