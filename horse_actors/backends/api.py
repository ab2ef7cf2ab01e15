"""ApiBackend: renders a job on a provider's API behind the same job -> outcome contract as
RenderActor.

For one job (`job.request` is an ApiRequest mapped by the planner):
1. wait for one of the provider's `max_concurrent` slots (shared by every backend of that
   provider in this process), so a big run never floods the account's queue;
2. read the render key's provider-task records: resume the latest task if it may still deliver
   (live, or succeeded, or cancelled by us but running anyway), report a refusal without paying
   again, else create a task and record its id before the first poll;
3. poll with backoff until the task ends (429/5xx waited out inside each call). A job cancelled
   while its task is still queued cancels the task at the provider and records it `cancelled`;
   one that is already running is left to finish, its record kept, and a rerun collects it;
4. download the result at once (a fresh link from the provider if it expired), read it back with
   PyAV and compare it with what was asked, store it content-addressed with a poster, and return
   an ApiRenderOutcome with the provider's usage. A clip that differs from the request is stored
   and reported as degraded, never as the render key's clip;
5. check it as a local clip is checked: delivery QC and masters (a Delivery), and the dialogue
   gate (a DialogueCheck: horse_actors.dialogue_gate, its recogniser loaded on the first job with
   a line to hear and kept). Never re-rolled: a re-roll is a new paid task, so a clip that fails
   is delivered with its failure on record (QC failures; `dialogue_failed` with its transcript).

A plain class: the driver can call it from threads, or a Ray actor can run it
(`ray.remote(ApiBackend).options(max_concurrency=spec.max_concurrent, num_cpus=0)`). Neither its
constructor arguments nor a pickled instance hold the key; it is read from the environment of
the process that makes each call.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from media import poster_jpeg
from media.received import ReceivedFileError, check_received, first_frame
from model.errors import InvalidRequest

from ..actor import _ray_cancel_requested, _ray_context
from ..config import SpeechSpec, StoreTarget
from ..delivery import check_clip, make_deliverables
from ..dialogue_gate import FAILED as DIALOGUE_FAILED
from ..dialogue_gate import DialogueGate, unchecked
from ..jobs import CANCELLED, CANCELLED_CLASS, DEGRADED, FAILED, OK, RenderJob, RenderOutcome
from .fal import FalQueue
from .http import AUTH, INVALID, LINK_EXPIRED, NOT_FOUND, PROTOCOL, REFUSED, TASK_FAILED, ProviderError
from .modelark import ModelArkTasks
from .request import ApiRequest
from .spec import ProviderSpec, billed_tokens, ratio_numbers
from .task_api import TaskApi, TaskState

log = logging.getLogger(__name__)

TIMEOUT = "ProviderTimeout"
# Errors that the same request will meet again: no retry, and a recorded refusal is not re-paid.
FINAL = (REFUSED, INVALID, AUTH, LINK_EXPIRED)
# Latest task states after which the next attempt creates a new task.
ENDED_WITHOUT_RESULT = ("failed", "expired", "cancelled", "lost")
TASK_APIS = {"modelark": ModelArkTasks, "fal": FalQueue}

_slots: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


def provider_slots(spec: ProviderSpec) -> threading.BoundedSemaphore:
    """The process-wide semaphore bounding tasks in flight at one provider."""
    with _slots_lock:
        return _slots.setdefault((spec.name, spec.max_concurrent), threading.BoundedSemaphore(spec.max_concurrent))


@dataclass
class ApiRenderOutcome(RenderOutcome):
    """A RenderOutcome with what the provider did: its task, its usage, the request adjustments."""

    provider: str | None = None
    provider_model: str | None = None
    task_id: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    adjustments: dict[str, Any] = field(default_factory=dict)  # brief value -> sent value (ApiRequest)
    cost_usd: float | None = None  # from usage and the configured prices, when both are known


class _Stopped(Exception):
    """The job was cancelled while it waited (`task_id`: its provider task, if it had one)."""

    def __init__(self, message: str, task_id: str | None = None):
        super().__init__(message)
        self.task_id = task_id


class ApiBackend:
    def __init__(self, provider: ProviderSpec, store: StoreTarget, *, speech: SpeechSpec | None = None,
                 scratch_dir: str | None = None, sleep: Callable[[float], None] = time.sleep):
        """`speech`: the run's dialogue gate recogniser (the render actors' ModelSpec.speech); None:
        this backend hears nothing, and a job whose check asks to be heard is refused before it is paid."""
        self.spec, self.store_target, self.scratch_dir, self.sleep = provider, store, scratch_dir, sleep
        self.speech = speech  # names a recogniser (or a local folder): no secret
        self.renders = 0
        self._store = None
        self._api: TaskApi | None = None
        self._gate: DialogueGate | None = None
        self._gate_lock = threading.Lock()  # jobs run on up to max_concurrent threads: one recogniser
        self._recent: collections.OrderedDict[str, RenderOutcome] = collections.OrderedDict()
        self.ids = _ray_context()

    def __getstate__(self) -> dict[str, Any]:
        # Rebuilt where it is used: the Store and the HTTP clients stay in their process.
        return {"spec": self.spec, "store_target": self.store_target, "speech": self.speech,
                "scratch_dir": self.scratch_dir, "sleep": self.sleep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"], state["store_target"], speech=state.get("speech"),
                      scratch_dir=state["scratch_dir"], sleep=state["sleep"])

    @property
    def store(self):
        if self._store is None:
            from catalog import Store

            self._store = Store(self.store_target.url, storage_options=self.store_target.options)
        return self._store

    @property
    def api(self) -> TaskApi:
        if self._api is None:
            self._api = TASK_APIS[self.spec.kind](self.spec, sleep=self.sleep)
        return self._api

    def gate(self) -> DialogueGate:
        """The dialogue gate, its recogniser loaded on the first job with a line to hear: a run
        without dialogue pays nothing for it. On the CPU: a provider actor holds no GPU."""
        with self._gate_lock:
            if self._gate is None:
                self._gate = DialogueGate(self.speech, "cpu")
            return self._gate

    def stats(self) -> dict[str, Any]:
        heard = self._gate.stats() if self._gate is not None else {"recognizer": None, "recognizer_load_s": 0.0}
        return {**self.ids, "pid": os.getpid(), "backend": "api", "provider": self.spec.name,
                "model": self.spec.model, "max_concurrent": self.spec.max_concurrent, "renders": self.renders, **heard}

    def finished(self, call_ids: list[str]) -> dict[str, RenderOutcome]:
        """Outcomes of recent calls by call id (the pool's cancel protocol, as RenderActor.finished)."""
        return {c: self._recent[c] for c in call_ids if c in self._recent}

    # -- one job ---------------------------------------------------------------------------
    def render(self, job: RenderJob, attempt: int = 1, submitted_at: float | None = None,
               call_id: str | None = None, should_stop: Callable[[], bool] | None = None) -> RenderOutcome:
        """Render one job on the provider; every error comes back as an outcome."""
        outcome = self._render(job, attempt, submitted_at, should_stop or _ray_cancel_requested)
        if call_id is not None:
            self._recent[call_id] = outcome
            while len(self._recent) > 64:
                self._recent.popitem(last=False)
        return outcome

    def _render(self, job: RenderJob, attempt: int, submitted_at: float | None, stop) -> RenderOutcome:
        started = time.time()
        timings = {"queue": round(max(0.0, started - (submitted_at or started)), 4)}
        request = job.request
        base = dict(self.ids, pid=os.getpid(), attempt=attempt, timings=timings, provider=self.spec.name,
                    provider_model=getattr(request, "model", None),
                    model_fingerprint=f"{self.spec.name}:{getattr(request, 'model', '')}",
                    adjustments=dict(getattr(request, "adjustments", {}) or {}))
        record: dict[str, Any] | None = None
        try:
            if not isinstance(request, ApiRequest) or request.provider != self.spec.name:
                raise InvalidRequest(f"{job.render_key}: not an ApiRequest for provider {self.spec.name}")
            if job.dialogue is not None and not job.dialogue.unchecked:  # before a task is paid for: its
                self.gate().require(job.dialogue)                        # render key promises a checked clip
            t0 = time.monotonic()
            with self._slot(stop):
                timings["slot_wait"] = round(time.monotonic() - t0, 4)
                record, state = self._task_until_done(job, request, attempt, stop, timings)
            outcome = self._deliver(job, request, record, state, timings, base)
            self.renders += 1
        except _Stopped as stopped:
            outcome = ApiRenderOutcome(job.render_key, CANCELLED, error_class=CANCELLED_CLASS,
                                       error_message=str(stopped), task_id=stopped.task_id, **base)
        except (ProviderError, InvalidRequest) as exc:
            kind = exc.kind if isinstance(exc, ProviderError) else INVALID
            said = "refused the request" if kind == REFUSED else "said"
            outcome = ApiRenderOutcome(job.render_key, FAILED, error_class=kind,
                                       error_message=f"{self.spec.name} {said}: {exc}"[:2000],
                                       retryable=kind not in FINAL,
                                       task_id=record and record["task_id"], usage=(record or {}).get("usage") or {},
                                       **base)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an outcome (store trouble, a bug)
            log.exception("%s: API render failed", job.render_key)
            outcome = ApiRenderOutcome(job.render_key, FAILED, error_class=type(exc).__name__,
                                       error_message=f"{type(exc).__name__}: {exc}"[:2000], retryable=True,
                                       task_id=record and record["task_id"], **base)
        outcome.duration_s = round(time.time() - started, 3)
        return outcome

    @contextlib.contextmanager
    def _slot(self, stop):
        slots = provider_slots(self.spec)
        while not slots.acquire(timeout=0.2):
            if stop():
                raise _Stopped("cancelled while waiting for a free provider slot")
        try:
            yield
        finally:
            slots.release()

    # -- the provider's task ---------------------------------------------------------------
    def _task_until_done(self, job, request: ApiRequest, attempt: int, stop, timings) -> tuple[dict, TaskState]:
        """The render key's task, resumed or created, polled until it succeeded."""
        tasks = self.store.provider_tasks
        latest = tasks.latest(job.render_key)
        if latest is not None and latest["status"] == "cancelled":
            latest = self._recheck_cancelled(latest)
        if latest is not None and latest["status"] == "failed" and latest.get("error_kind") in FINAL:
            # The same request was refused before: say so again instead of paying again.
            raise ProviderError(latest["error_kind"], latest.get("error_message") or "refused earlier")
        if latest is None or latest["status"] in ENDED_WITHOUT_RESULT:
            record = self._create(job, request, attempt, 1 if latest is None else latest["seq"] + 1)
        else:
            record = latest
            log.info("%s: resuming %s task %s (%s)", job.render_key, self.spec.name, record["task_id"], record["status"])
        return self._poll(record, stop, timings)

    def _create(self, job, request: ApiRequest, attempt: int, seq: int) -> dict:
        task_id, urls = self.api.create(request)
        tasks = self.store.provider_tasks
        try:
            record = tasks.record_created(job.render_key, seq, attempt=attempt, provider=self.spec.name,
                                          model=request.model, task_id=task_id, urls=urls)
        except Exception:
            # Unrecorded, a rerun could not find it: cancel it while it is (probably) still queued.
            log.error("%s: could not record %s task %s; cancelling it", job.render_key, self.spec.name, task_id)
            self._cancel_quietly(task_id, urls)
            raise
        if record is None:  # another process recorded task `seq` first: follow theirs
            self._cancel_quietly(task_id, urls)
            record = tasks.latest(job.render_key)
        log.info("%s: created %s task %s (task %d of this render key)", job.render_key, self.spec.name,
                 record["task_id"], record["seq"])
        return record

    def _recheck_cancelled(self, record: dict) -> dict:
        """A task cancelled while it was queued, looked at once more before paying for another:
        fal's cancel is a request, and a task that started meanwhile runs (and bills) anyway."""
        try:
            state = self.api.get(record["task_id"], record["urls"])
        except ProviderError as exc:
            if exc.kind == NOT_FOUND:  # removed from the queue, as asked
                return record
            raise
        if state.status not in ("queued", "running", "succeeded"):
            return record
        log.warning("%s task %s was cancelled while queued but is %s: following it instead of paying again",
                    self.spec.name, record["task_id"], state.status)
        return self.store.provider_tasks.update(record, status=state.status, usage=state.usage or record.get("usage") or {})

    def _cancel_quietly(self, task_id: str, urls: dict) -> bool:
        try:
            return self.api.cancel(task_id, urls)
        except ProviderError as exc:
            log.warning("could not cancel %s task %s: %s", self.spec.name, task_id, exc)
            return False

    def _poll(self, record: dict, stop, timings: dict) -> tuple[dict, TaskState]:
        tasks, spec = self.store.provider_tasks, self.spec
        t0 = time.monotonic()
        give_up = t0 + spec.max_wait_s
        running_since = None
        delay = spec.poll_initial_s
        while True:
            if stop():
                if record["status"] in ("created", "queued") and self._cancel_quietly(record["task_id"], record["urls"]):
                    tasks.update(record, status="cancelled")
                    raise _Stopped(f"cancelled; {spec.name} task {record['task_id']} was cancelled while queued",
                                   record["task_id"])
                raise _Stopped(f"cancelled; {spec.name} task {record['task_id']} was already running and goes on "
                               "(a rerun of this render key picks up its result)", record["task_id"])
            try:
                state = self.api.get(record["task_id"], record["urls"])
            except ProviderError as exc:
                if exc.kind == NOT_FOUND:
                    tasks.update(record, status="lost", error_kind=exc.kind, error_message=str(exc))
                raise
            if state.status in ("running", "succeeded") and running_since is None:
                running_since = time.monotonic()
            if state.status != record["status"] or state.terminal:
                error = state.error
                record = tasks.update(record, status=state.status, usage=state.usage or record.get("usage") or {},
                                      error_kind=error and error.kind, error_message=error and str(error))
            if state.terminal:
                now = time.monotonic()
                timings["provider_queue"] = round((running_since or now) - t0, 4)
                timings["provider_render"] = round(now - (running_since or now), 4)
                if state.status == "succeeded":
                    return record, state
                raise state.error or ProviderError(TASK_FAILED, f"task {record['task_id']} was {state.status}")
            if time.monotonic() > give_up:
                raise ProviderError(TIMEOUT, f"task {record['task_id']} still {state.status} after "
                                             f"{spec.max_wait_s:g}s; the next attempt resumes it")
            self._pause(delay, stop)
            delay = min(delay * 1.5, spec.poll_max_s)

    def _pause(self, seconds: float, stop) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0 and not stop():
            self.sleep(min(left, 0.2))

    # -- the result ------------------------------------------------------------------------
    def _fetch(self, record: dict, state: TaskState, path: str) -> None:
        """The result into `path`: its link, a fresh link if that one expired, or the copy an
        interrupted run already stored."""
        try:
            if not state.video_url:
                raise ProviderError(PROTOCOL, f"task {record['task_id']} succeeded without a result link")
            self.api.http.download(state.video_url, path)
            return
        except ProviderError as exc:
            if exc.kind != LINK_EXPIRED:
                raise
        fresh = self.api.get(record["task_id"], record["urls"])
        if fresh.video_url and fresh.video_url != state.video_url:
            try:
                self.api.http.download(fresh.video_url, path)
                return
            except ProviderError as exc:
                if exc.kind != LINK_EXPIRED:
                    raise
        stored = record.get("blob_sha256")
        if stored and self.store.blob_exists(stored, "mp4"):
            with self.store.open_blob(stored, "mp4") as src, open(path, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            return
        raise ProviderError(LINK_EXPIRED, f"the result of task {record['task_id']} can no longer be downloaded "
                                          f"and {self.spec.name} gives no fresh link; rendering it again means a "
                                          "new paid task (delete its provider_tasks record to allow that)")

    def _deliver(self, job, request: ApiRequest, record: dict, state: TaskState, timings: dict,
                 base: dict) -> ApiRenderOutcome:
        scratch = tempfile.mkdtemp(prefix="horse-api-", dir=self.scratch_dir)
        try:
            path = os.path.join(scratch, "result.mp4")
            t0 = time.perf_counter()
            self._fetch(record, state, path)
            timings["download"] = round(time.perf_counter() - t0, 4)
            try:
                check = check_received(path, ratio=ratio_numbers(request.ratio), seconds=request.seconds,
                                       resolution=request.resolution, audio=request.generate_audio,
                                       tiers=self.spec.resolutions)
            except ReceivedFileError as exc:
                raise ProviderError(PROTOCOL, f"task {record['task_id']}: the result {exc}") from None
            problems = check.problems + self._echo_problems(request, state.echo)
            t0 = time.perf_counter()
            blob = self.store.put_blob(path, ext="mp4")
            poster = self.store.put_blob(poster_jpeg(first_frame(path)), ext="jpg")
            timings["upload"] = round(time.perf_counter() - t0, 4)
            qc, qc_attempts = None, []
            if job.delivery is not None:  # delivery QC and masters as for a local clip; no re-roll (paid)
                t0 = time.perf_counter()
                clip_qc = check_clip(path, request.seed, job)
                timings["qc"] = round(time.perf_counter() - t0, 4)
                qc, qc_attempts = make_deliverables(path, job, clip_qc, self.store, scratch, timings), [clip_qc.attempt()]
            dialogue = self._hear(job, path, request.seed, timings)
            if dialogue is not None and dialogue["status"] != "unchecked":  # the attempt's record, as a local clip's
                qc_attempts = [{**(qc_attempts[0] if qc_attempts else {"seed": request.seed}), "dialogue": dialogue}]
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        info = check.info
        usage = dict(state.usage or record.get("usage") or {})
        if billed_tokens(usage)[0] is None:
            # The token count both Seedance price lists bill by: W x H x 24 fps x seconds / 1024.
            usage["estimated_tokens"] = round(info.width * info.height * 24 * info.video_seconds / 1024)
        self.store.provider_tasks.update(record, blob_sha256=blob.sha256, usage=usage)
        return ApiRenderOutcome(
            job.render_key, OK if not problems else DEGRADED,
            error_class=None if not problems else "ResultDiffers", error_message="; ".join(problems) or None,
            blob_uri=blob.uri, sha256=blob.sha256, bytes=blob.bytes, poster_uri=poster.uri,
            width=info.width, height=info.height, frames=info.frames, audio_seconds=info.audio_seconds,
            rendered_resolution=check.tier, task_id=record["task_id"], usage=usage, cost_usd=self._cost(usage),
            qc=qc, qc_attempts=qc_attempts, rendered_seed=request.seed, dialogue=dialogue, **base)

    # -- the dialogue gate -----------------------------------------------------------------
    def _hear(self, job: RenderJob, path: str, seed: int, timings: dict) -> dict | None:
        """The dialogue gate's record of the delivered clip (None: no line), shaped as a local
        clip's. A failing clip is not re-rolled: that would be a new paid task."""
        check = job.dialogue
        if check is None or check.unchecked:
            return unchecked(check)
        t0 = time.perf_counter()
        heard = {**self.gate().hear(path, check), "seed": seed, "attempts": 1}
        timings["dialogue"] = round(time.perf_counter() - t0, 4)
        if heard["status"] == DIALOGUE_FAILED:
            heard["reason"] = (f"{heard.get('reason')}; not re-rolled: a re-roll is a new paid "
                               f"{self.spec.name} task")
        return heard

    @staticmethod
    def _echo_problems(request: ApiRequest, echo: dict) -> list[str]:
        """Where the provider says it rendered something else than it was sent."""
        sent = {"ratio": request.ratio, "resolution": request.resolution, "duration": request.seconds,
                "seed": request.seed}
        return [f"provider reports {name} {echo[name]!r}, sent {value!r}"
                for name, value in sent.items() if name in echo and echo[name] != value]

    def _cost(self, usage: dict) -> float | None:
        reported, estimated = billed_tokens(usage)
        tokens = reported if reported is not None else estimated
        if self.spec.price_per_million_tokens is not None and tokens is not None:
            return round(tokens * self.spec.price_per_million_tokens / 1e6, 6)
        return self.spec.price_per_clip
