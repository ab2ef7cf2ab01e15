"""The render stage of a run: settings become a RenderPool, planned variants become render jobs,
and the pool renders them all as one continuous stream whose outcomes the flow takes as they
arrive."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

from catalog import public_options
from flows.dialogue import speech_spec
from flows.plan import PREVIEW, PlannedJob
from flows.routing import api_render_job
from flows.settings import HorseSettings
from horse_actors import Delivery, ModelSpec, PoolConfig, RenderJob, RenderOutcome, RenderPool, Scheduling, StoreTarget
from horse_actors.api_actor import run_routed
from media import load_audio, load_image


def pool_config(settings: HorseSettings) -> PoolConfig:
    resolved = settings.resolved_model()
    ray = settings.ray
    return PoolConfig(
        model=ModelSpec(
            name=resolved.checkpoint_dir or "tiny",
            device=None if resolved.device == "auto" else resolved.device,
            dtype=resolved.dtype,
            offload=resolved.offload,
            speech=speech_spec(settings),  # the dialogue gate's recogniser, resident beside the model
        ),
        # Credentials never travel as Ray arguments: actors read them from their environment.
        store=StoreTarget(settings.store_url, public_options(settings.storage_options) or None),
        scheduling=Scheduling(
            ray_address=ray.address,
            num_actors=ray.num_actors,
            gpus_per_actor=ray.gpus_per_actor,
            cpus_per_actor=ray.cpus_per_actor,
            cpu_mode=ray.cpu_mode or resolved.device == "cpu",
            max_in_flight_per_actor=ray.max_in_flight_per_actor,
            overlap=ray.overlap,
            job_deadline_s=ray.job_deadline_s,
            max_retries=ray.max_retries,
        ),
    )


def to_render_job(job: PlannedJob, model_fingerprint: str) -> RenderJob:
    if job.api_request is not None:  # rendered by a provider: the request it was planned with
        return api_render_job(job)
    from model import RenderRequest

    request = RenderRequest(
        prompt=job.prompt,
        resolution=job.resolution,
        aspect_ratio=job.aspect_ratio,
        seconds=job.seconds,
        seed=job.seed,
        profile=job.profile,
        image=load_image(job.image_path) if job.image_path else None,
        **_load_audio(job.audio_path),
    )
    metadata = {
        "horse_render_key": job.render_key,
        "horse_campaign": job.campaign_id,
        "horse_shot": job.shot_id,
        "horse_variant": job.variant,
        "horse_seed": str(job.seed),
        "horse_model_fingerprint": model_fingerprint,
    }
    if job.language:
        metadata["language"] = job.language
    # a preview's base latent is kept for promotes; other stage results only for retries
    retention = "preview" if job.role == PREVIEW else "retry"
    delivery = Delivery(job.destinations, job.max_rerolls, job.expects_speech) if job.destinations else None
    adapter = {"adapter_sha256": job.adapter.sha256, "adapter_strength": job.adapter.strength} if job.adapter else {}
    if job.adapter:
        metadata["horse_adapter"] = job.adapter.name
    return RenderJob(job.render_key, request, job.campaign_id, job.shot_id, job.variant, metadata,
                     stage_retention=retention, priority=job.dispatch_priority, delivery=delivery, dialogue=job.dialogue,
                     **adapter)


def _load_audio(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    audio, rate = load_audio(path)
    return {"audio": audio, "audio_sample_rate": rate}


def start_pool(pool: RenderPool) -> str:
    """Start the pool's actors; say in one sentence what is ready (per-actor details stay in the
    outcome records: actor, node and GPU ids, attempts, timings)."""
    started = time.perf_counter()
    actors = pool.start()
    devices = sorted({str(actor.get("device")) for actor in actors})
    slowest = max((actor.get("load_s") or 0.0 for actor in actors), default=0.0)
    return (f"render pool ready in {time.perf_counter() - started:.1f}s: {len(actors)} "
            f"actor{'s' if len(actors) != 1 else ''} on {', '.join(devices)}, model loaded in {slowest:.1f}s"
            f"{' (slowest actor)' if len(actors) > 1 else ''}")


class RenderStream:
    """The pool renders every planned job as one continuous stream on a background thread, so no
    GPU idles at a chunk boundary; outcomes reach the flow's thread through a queue, in the order
    they finish.

        with RenderStream(pool, todo, to_job) as stream:
            for job, outcome in stream.outcomes(): ...

    A job's RenderJob is built (`to_job`: its inputs loaded) only when an actor has room for it,
    and the stream holds a planned job only from then until its outcome is taken, so the driver's
    memory does not grow with the number of jobs. (A run with API jobs builds them all first: the
    provider actors take their jobs as one list.)

    `admit` and `on_outcome` (a budget guard) run in the loops that dispatch: the pool's for local
    jobs, the provider actors' for API jobs (two threads when a run has both), so an outcome is
    seen before the next job of its loop is admitted.
    """

    _END = object()

    def __init__(self, pool: RenderPool, todo: Iterable[PlannedJob], to_job: Callable[[PlannedJob], RenderJob],
                 providers: Mapping[str, Any] | None = None, admit: Callable[[RenderJob], bool] | None = None,
                 on_outcome: Callable[[RenderOutcome], None] | None = None):
        self.pool = pool
        self.providers = providers or {}  # ProviderSpec by name, for the jobs an API provider renders
        self.admit, self.on_outcome = admit, on_outcome
        self.cancel = threading.Event()
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue()
        self._dispatched: dict[str, PlannedJob] = {}  # built and handed to the pool, outcome not yet taken
        self._thread = threading.Thread(target=self._render, args=(todo, to_job), name="horse-render-stream",
                                        daemon=True)
        self._thread.start()

    def _built(self, todo: Iterable[PlannedJob], to_job: Callable[[PlannedJob], RenderJob]) -> Iterator[RenderJob]:
        for job in todo:
            self._dispatched[job.render_key] = job
            yield to_job(job)

    def _render(self, todo: Iterable[PlannedJob], to_job: Callable[[PlannedJob], RenderJob]) -> None:
        try:
            jobs = self._built(todo, to_job)
            if self.providers:
                run_routed(self.pool, list(jobs), self._arrived, self.cancel, self.providers, admit=self.admit)
            else:  # local jobs only: the pool takes each from the iterator when an actor has room
                self.pool.stream(jobs, on_outcome=self._arrived, cancel_event=self.cancel, admit=self.admit)
        except BaseException as exc:  # handed to the flow thread, which raises it
            self.error = exc
        finally:
            self._queue.put(self._END)

    def _arrived(self, outcome: RenderOutcome) -> None:
        job = self._dispatched.pop(outcome.render_key)
        self._queue.put((job, outcome))  # first: a failing hook must not lose the outcome
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    def outcomes(self) -> Iterator[tuple[PlannedJob, RenderOutcome]]:
        """Each job with its final outcome, in the order they finish; ends when the stream has
        ended (early only if it was stopped before rendering the rest), raising its error if any."""
        while True:
            try:  # a short timeout keeps the flow's thread responsive to signals (cancel)
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is self._END:
                if self.error is not None:
                    raise self.error
                return
            yield item

    def __enter__(self) -> "RenderStream":
        return self

    def __exit__(self, *exc) -> None:
        """Cancel what is still queued or running and wait for the pool to let go of it."""
        self.cancel.set()
        self._thread.join()
