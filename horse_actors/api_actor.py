"""API render jobs on Ray, beside the GPU pool: one actor per provider runs `ApiBackend`.

    run_routed(pool, jobs, on_outcome, cancel_event, providers)

Jobs whose request is an `ApiRequest` go to their provider's actor; the others go to
`pool.stream` (outcomes handed on, none kept) (on a thread of their own when both kinds are in one run). Every final
outcome reaches the same `on_outcome`, so the caller collects, records and publishes API clips
exactly like local ones.

Each provider gets one actor (`max_concurrency` = the account's queue limit, no CPU reserved:
it waits on HTTP) and at most that many of its jobs in flight, so a big run never floods the
provider. What a failure means:
- a failed attempt the backend calls retryable (rate limit storm past its budget, 5xx, a task
  that ended without a result) is retried up to `Scheduling.max_retries` times;
- a dead actor (crashed, killed) is replaced, up to `Scheduling.max_actor_restarts` times, and
  each job it was running is retried: the render key's provider task was recorded before its
  first poll (catalog.provider_tasks), so the retry polls that same task instead of paying again;
- refusals and invalid requests are final.
Deadlines are the backend's own (`ProviderSpec.max_wait_s`), not the pool's GPU deadline.
Arguments that reach Ray are the ProviderSpec (the *name* of the key's environment variable,
never the key), the StoreTarget (public options only), the run's SpeechSpec (the render actors'
`ModelSpec.speech`: the provider actor hears its clips with the same dialogue gate) and the jobs.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import ray
from ray.exceptions import RayActorError, TaskCancelledError

from .backends.api import ApiBackend
from .backends.request import ApiRequest
from .cluster import connect
from .config import Scheduling, SpeechSpec, StoreTarget
from .jobs import (ACTOR_DIED, CANCELLED, CANCELLED_CLASS, FAILED, NO_ACTORS, NOT_ADMITTED, RenderJob, RenderOutcome,
                   classify, failed)
from .slots import first_line

log = logging.getLogger(__name__)


def is_api_job(job: RenderJob) -> bool:
    return isinstance(job.request, ApiRequest)


def run_routed(pool, jobs: list[RenderJob], on_outcome: Callable[[RenderOutcome], None],
               cancel_event: threading.Event | None, providers: Mapping[str, Any],
               admit: Callable[[RenderJob], bool] | None = None) -> None:
    """Render `jobs` on their backends: local ones on `pool` (a RenderPool, asking `admit` before
    each dispatch: RenderPool.stream), API ones on provider actors (asking `admit` before each
    job's first dispatch: a retry polls the task already paid for); each final outcome goes to
    `on_outcome` (from either thread)."""
    api = [job for job in jobs if is_api_job(job)]
    if not api:
        pool.stream(jobs, on_outcome=on_outcome, cancel_event=cancel_event, admit=admit)  # no outcome kept: runs of any size
        return
    cancel_event = cancel_event or threading.Event()
    local = [job for job in jobs if not is_api_job(job)]
    errors: list[BaseException] = []

    def run_local() -> None:
        try:
            pool.stream(local, on_outcome=on_outcome, cancel_event=cancel_event, admit=admit)
        except BaseException as exc:  # handed to the caller's thread
            errors.append(exc)
            cancel_event.set()

    thread = threading.Thread(target=run_local, name="horse-local-renders", daemon=True) if local else None
    if thread:
        thread.start()
    try:
        with ProviderActors(providers, pool.config.store, pool.config.scheduling,
                            speech=pool.config.model.speech) as actors:
            actors.run(api, on_outcome, cancel_event, admit)
    except BaseException:
        cancel_event.set()
        raise
    finally:
        if thread:
            thread.join()
    if errors:
        raise errors[0]


@dataclass
class _Task:
    job: RenderJob
    attempt: int = 1
    history: list = field(default_factory=list)


@dataclass
class _Provider:
    spec: Any  # ProviderSpec
    actor: Any = None
    restarts: int = 0
    pending: deque = field(default_factory=deque)
    in_flight: int = 0


class ProviderActors:
    """The provider actors of one run and the scheduler feeding them."""

    def __init__(self, providers: Mapping[str, Any], store: StoreTarget, scheduling: Scheduling, *,
                 speech: SpeechSpec | None = None):
        self.store, self.sched, self.speech = store, scheduling, speech  # speech: the run's dialogue gate recogniser
        self.providers = {name: _Provider(spec) for name, spec in providers.items()}
        self.calls: dict[Any, tuple[_Task, _Provider, Any, str]] = {}  # ref -> (task, provider, actor, call id)
        self.admit: Callable[[RenderJob], bool] | None = None

    def __enter__(self) -> "ProviderActors":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def _actor(self, provider: _Provider):
        if provider.actor is None:
            spec = provider.spec
            connect(self.sched.ray_address)
            remote = ray.remote(ApiBackend).options(
                name=f"horse-api-{spec.name}-{uuid.uuid4().hex[:8]}", num_cpus=0,
                max_concurrency=spec.max_concurrent, max_restarts=0, max_task_retries=0)
            provider.actor = remote.remote(spec, self.store, speech=self.speech)
        return provider.actor

    def run(self, jobs: list[RenderJob], on_outcome, cancel_event: threading.Event,
            admit: Callable[[RenderJob], bool] | None = None) -> None:
        """Render `jobs` (in the order given, per provider); `admit(job)` is asked before each job's
        first dispatch, and after its first no the rest end not admitted (NOT_ADMITTED)."""
        self.admit = admit
        for job in jobs:
            name = job.request.provider
            if name not in self.providers:
                on_outcome(failed(job, "InvalidRequest", f"backend {name!r} is not configured", retryable=False,
                                  attempt=1))
                continue
            self.providers[name].pending.append(_Task(job))
        while self.calls or any(p.pending for p in self.providers.values()):
            if cancel_event.is_set():
                self._cancel(on_outcome)
                return
            self._dispatch(on_outcome)
            if not self.calls:
                continue
            ready, _ = ray.wait(list(self.calls), num_returns=1, timeout=self.sched.poll_s)
            for ref in ready:
                self._on_result(ref, on_outcome)

    def _dispatch(self, on_outcome) -> None:
        for provider in self.providers.values():
            while provider.pending and provider.in_flight < provider.spec.max_concurrent:
                task = provider.pending[0]
                if task.attempt == 1 and self.admit is not None and not self.admit(task.job):
                    self._stop_taking(on_outcome)
                    return
                provider.pending.popleft()
                if provider.restarts > self.sched.max_actor_restarts:
                    self._finish(task, failed(task.job, NO_ACTORS, f"the {provider.spec.name} actor used up its "
                                              "restarts", retryable=True, attempt=task.attempt), on_outcome)
                    continue
                actor, call_id = self._actor(provider), uuid.uuid4().hex
                ref = actor.render.remote(task.job, task.attempt, time.time(), call_id)
                self.calls[ref] = (task, provider, actor, call_id)
                provider.in_flight += 1

    def _on_result(self, ref, on_outcome) -> None:
        task, provider, actor, _ = self.calls.pop(ref)
        provider.in_flight -= 1
        try:
            outcome = ray.get(ref)
        except RayActorError as exc:
            if provider.actor is actor:  # the first of its calls to notice: replace it once
                log.warning("%s actor died (%s); replacing it", provider.spec.name, first_line(exc))
                ray.kill(actor, no_restart=True)
                provider.actor = None
                provider.restarts += 1
            outcome = failed(task.job, ACTOR_DIED, first_line(exc), retryable=True, attempt=task.attempt)
        except TaskCancelledError:
            outcome = failed(task.job, CANCELLED_CLASS, "cancelled", retryable=False, attempt=task.attempt,
                             status=CANCELLED)
        except Exception as exc:  # noqa: BLE001 - an error that escaped ApiBackend.render
            error_class, retryable = classify(getattr(exc, "cause", None) or exc)
            outcome = failed(task.job, error_class, first_line(exc), retryable=retryable, attempt=task.attempt)
        if outcome.status == FAILED and outcome.retryable and task.attempt <= self.sched.max_retries:
            log.info("%s attempt %d failed (%s); retrying", task.job.render_key, task.attempt, outcome.error_class)
            summary = {"attempt": task.attempt, "error_class": outcome.error_class,
                       "error_message": outcome.error_message, "actor_id": outcome.actor_id}
            provider.pending.appendleft(_Task(task.job, task.attempt + 1, [*task.history, summary]))
            return
        self._finish(task, outcome, on_outcome)

    @staticmethod
    def _finish(task: _Task, outcome: RenderOutcome, on_outcome) -> None:
        outcome.earlier_attempts = list(task.history)
        try:
            on_outcome(outcome)
        except Exception:  # noqa: BLE001 - a progress hook must not stop the run
            log.exception("on_outcome callback failed for %s", outcome.render_key)

    def _stop_taking(self, on_outcome) -> None:
        """Take no new job: every queued first attempt ends not admitted; retries of jobs already
        dispatched go on (their provider tasks are paid for), as do the running ones."""
        skipped = 0
        for provider in self.providers.values():
            kept = deque()
            while provider.pending:
                task = provider.pending.popleft()
                if task.attempt > 1:
                    kept.append(task)
                    continue
                self._finish(task, failed(task.job, NOT_ADMITTED, "not dispatched: the run stopped taking new jobs",
                                          retryable=False, attempt=task.attempt, status=CANCELLED), on_outcome)
                skipped += 1
            provider.pending = kept
        self.admit = lambda job: False  # noqa: E731 - later retries are never first attempts
        log.info("API jobs: no longer taking new jobs: %d not dispatched", skipped)

    def _cancel(self, on_outcome) -> None:
        """Queued jobs end cancelled; running ones are asked to stop (a task still queued at the
        provider is cancelled there, a running one goes on and a rerun collects it) and get
        `cancel_grace_s` to answer."""
        for provider in self.providers.values():
            while provider.pending:
                task = provider.pending.popleft()
                self._finish(task, failed(task.job, CANCELLED_CLASS, "cancelled before it started", retryable=False,
                                          attempt=task.attempt, status=CANCELLED), on_outcome)
        for ref in self.calls:
            ray.cancel(ref)
        ray.wait(list(self.calls), num_returns=len(self.calls), timeout=self.sched.cancel_grace_s)
        # `ray.get` of a cancelled call raises even when the backend answered (a task cancelled at
        # the provider, or one left running with its id): ask each actor what its calls returned.
        really: dict[str, RenderOutcome] = {}
        by_actor: dict[Any, list[str]] = {}
        for _, _, actor, call_id in self.calls.values():
            by_actor.setdefault(actor, []).append(call_id)
        for actor, call_ids in by_actor.items():
            try:
                really.update(ray.get(actor.finished.remote(call_ids), timeout=self.sched.cancel_grace_s))
            except Exception:  # noqa: BLE001 - the actor died meanwhile: nothing to report
                pass
        for ref, (task, _, _, call_id) in list(self.calls.items()):
            outcome = really.get(call_id)
            if outcome is None:
                try:
                    outcome = ray.get(ref, timeout=0)  # it may have finished before the cancel
                except Exception:  # noqa: BLE001 - cancelled, not finished or actor gone
                    outcome = failed(task.job, CANCELLED_CLASS, "cancelled before it finished", retryable=False,
                                     attempt=task.attempt, status=CANCELLED)
            self._finish(task, outcome, on_outcome)
        self.calls.clear()

    def shutdown(self) -> None:
        for provider in self.providers.values():
            if provider.actor is not None:
                ray.kill(provider.actor, no_restart=True)
                provider.actor = None
