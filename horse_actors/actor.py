"""RenderActor: the model stays resident; each call renders, encodes and stores one job.

A plain class (the "what"); `RenderPool` runs it as a Ray actor with one GPU (the "where").
It can also be used in-process, e.g. by benchmarks/pool.py for the no-Ray baseline.
How the clip is produced — stage by stage, resuming from stored stage results, the OOM ladder —
is `horse_actors.staged`. Frames never leave the process: they are encoded to a local temp file,
checked, hashed and put into the catalog, and only a small `RenderOutcome` is returned. A job with
a `Delivery` also gets delivery QC and a master per destination here, on that local file
(horse_actors.delivery). A job with a brand adapter gets it applied on the resident model (read
from the catalog through a node-local cache the first time, then held on the model: no reload,
no base weight touched). Calls may run in threads at once (`Scheduling.overlap`): the model
renders one job at a time (`_model_lock`), so the next job renders while this one's CPU tail
(encode, QC, the dialogue gate, upload) runs, and the actor holds at most `CLIPS_AT_ONCE` clips
(one on the model, one finished in its tail): memory stays bounded whatever the pool sends.
Each outcome carries the actor's accelerator use so far (`accelerator`: the model's busy seconds
against the wall time since the actor's first job), so a run can say how much the device idled.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import shutil
import tempfile
import threading
import time
from typing import Any

from media import encode_mp4, poster_jpeg

from .config import Encoding, ModelSpec, StoreTarget
from .delivery import make_deliverables, render_checked
from .dialogue_gate import DialogueGate
from .jobs import (CANCELLED, CANCELLED_CLASS, DEGRADED, FAILED, MODEL_STAGES, OK, RenderJob, RenderOutcome,
                   classify, is_sticky_cuda, stage_device_seconds)
from .staged import StagedRenderer, StageReport

log = logging.getLogger(__name__)

# Pipelines built by this process. A Ray actor owns its worker process for life, so this is the
# number of model loads the actor has done; tests assert it stays 1.
_LOADS_IN_PROCESS = 0


def _ray_context() -> dict[str, Any]:
    """Actor, node and GPU ids when running inside Ray; empty values in a plain process."""
    try:
        import ray

        if not ray.is_initialized():
            return {"actor_id": None, "node_id": None, "gpu_ids": []}
        ctx = ray.get_runtime_context()
        return {
            "actor_id": ctx.get_actor_id(),
            "node_id": ctx.get_node_id(),
            "gpu_ids": [str(g) for g in ctx.get_accelerator_ids().get("GPU", [])],
        }
    except Exception:  # pragma: no cover - outside a worker
        return {"actor_id": None, "node_id": None, "gpu_ids": []}


def _ray_cancel_requested() -> bool:
    """`ray.cancel(ref)` on a running sync actor call only sets this flag (research A4)."""
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().is_canceled()
    except Exception:
        return False


def _stages(report: StageReport) -> dict[str, Any]:
    return {"stages_run": report.stages_run, "resumed_from": report.resumed_from,
            "stage_results": report.stage_results}


def _device_type(device: str) -> str:
    """What renders are timed on, for cost history: "cpu", or the GPU's name ("NVIDIA H100 80GB HBM3")."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return device.split(":")[0]


def _rss_bytes() -> int | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except Exception:  # pragma: no cover
        return None


class RenderActor:
    """Builds the pipeline once (`model`), warms it up, then renders jobs, encodes them
    (`encoding`) and puts the files into the catalog (`store`)."""

    # Clips alive on the actor at once: one rendering (or waiting for the model) and one finished,
    # in its CPU tail. A further call waits before it renders, holding no clip.
    CLIPS_AT_ONCE = 2

    def __init__(self, model: ModelSpec, store: StoreTarget, encoding: Encoding = Encoding()):
        global _LOADS_IN_PROCESS
        self.model, self.encoding = model, encoding
        self.renders = 0
        self._recent: collections.OrderedDict[str, RenderOutcome] = collections.OrderedDict()
        self._calls = threading.Condition()   # guards _recent and _running (calls may overlap)
        self._running: set[str] = set()       # call ids of the render calls under way
        self._model_lock = threading.Lock()   # one render on the model at a time
        self._clips = threading.BoundedSemaphore(self.CLIPS_AT_ONCE)
        self._first_job_at: float | None = None  # perf_counter when the first job began
        self._busy_s = 0.0                       # the model's stage seconds over every job (under _model_lock)
        t0 = time.perf_counter()
        self.pipe, self.device = self._build_pipeline()
        self.device_type = _device_type(self.device)
        self.pipe.adapter_capacity = model.adapter_capacity
        self.adapter_loads: list[str] = []  # sha256 of each adapter put onto the model, in order
        self._adapters: collections.OrderedDict[str, Any] = collections.OrderedDict()  # sha256 -> Adapter
        _LOADS_IN_PROCESS += 1
        self.load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if model.warmup_seconds > 0:
            self._warm_up()
        self.warmup_s = time.perf_counter() - t0

        from catalog import Store

        self.store = Store(store.url, storage_options=store.options)
        self.staged = StagedRenderer(self.pipe, self.store, model.oom_ladder, self.device)
        self.gate = DialogueGate(model.speech, self.device)  # the speech recogniser, resident like the model
        self.scratch = encoding.scratch_dir or tempfile.gettempdir()
        self.ids = _ray_context()
        log.info("model %s loaded in %.2fs, warmed in %.2fs on %s", model.name, self.load_s,
                 self.warmup_s, self.device)

    # -- model -----------------------------------------------------------------------------
    def _build_pipeline(self):
        import torch
        from model import HappyHorsePipeline

        spec = self.model
        device = spec.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if spec.name == "tiny":
            return HappyHorsePipeline.tiny(seed=spec.tiny_seed, device=device), device
        pipe = HappyHorsePipeline.from_pretrained(spec.name, device=device, dtype=spec.dtype, offload=spec.offload)
        return pipe, device

    def _warm_up(self) -> None:
        from model import RenderRequest

        request = RenderRequest(prompt="warm-up", seconds=self.model.warmup_seconds, seed=0)
        self.pipe(request)

    def stats(self) -> dict[str, Any]:
        """Load time, memory and identity: the pool collects this when the actor is ready."""
        gpu_mem = None
        if self.device.startswith("cuda"):
            import torch

            gpu_mem = torch.cuda.max_memory_allocated()
        return {
            **self.ids,
            "pid": os.getpid(),
            "model": self.model.name,
            "model_fingerprint": self.pipe.fingerprint,
            "device": self.device,
            "device_type": self.device_type,
            "load_count": _LOADS_IN_PROCESS,
            "load_s": round(self.load_s, 3),
            "warmup_s": round(self.warmup_s, 3),
            "rss_bytes": _rss_bytes(),
            "gpu_max_allocated_bytes": gpu_mem,
            "renders": self.renders,
            **self.gate.stats(),
            "adapter_loads": list(self.adapter_loads),
            "resident_adapters": list(self.pipe.resident_adapters),
        }

    # -- brand adapters --------------------------------------------------------------------
    def _adapter_for(self, job: RenderJob, timings: dict[str, float]) -> dict[str, Any]:
        """pipe() arguments for the job's adapter: read from the catalog via the node's cache and
        put on the model the first time (timed as "adapter"), a flag flip when already held."""
        if job.adapter_sha256 is None:
            return {}
        from model import Adapter, AdapterError

        sha = job.adapter_sha256
        if sha not in self.pipe.resident_adapters:
            t0 = time.perf_counter()
            path = self.store.adapters.fetch(sha, os.path.join(self.scratch, "horse-adapters"))
            adapter = Adapter.load(path)
            if adapter.sha256 != sha:
                raise AdapterError(f"adapter {sha[:12]}: the cached file reads back as {adapter.sha256[:12]}")
            self.pipe.use_adapter(adapter, job.adapter_strength)  # checks fit, injects, holds it
            self._adapters[sha] = adapter
            self.adapter_loads.append(sha)
            timings["adapter"] = round(timings.get("adapter", 0.0) + time.perf_counter() - t0, 4)
            log.info("adapter %s: put on the model in %.3fs", sha[:12], time.perf_counter() - t0)
        else:
            log.info("adapter %s: already held, no load", sha[:12])
        self._adapters.move_to_end(sha)
        for old in [s for s in self._adapters if s not in self.pipe.resident_adapters]:
            del self._adapters[old]  # evicted from the model: drop our reference too
        return {"adapter": self._adapters[sha], "adapter_strength": job.adapter_strength}

    # -- one job ---------------------------------------------------------------------------
    def render(self, job: RenderJob, attempt: int = 1, submitted_at: float | None = None,
               call_id: str | None = None) -> RenderOutcome:
        """Render, encode, check and store one job; every error comes back as an outcome.

        Only sticky CUDA errors escape: the process exits so the pool replaces the actor.
        """
        if call_id is None:
            return self._render(job, attempt, submitted_at)
        with self._calls:
            self._running.add(call_id)
        outcome = None
        try:
            outcome = self._render(job, attempt, submitted_at)
        finally:
            with self._calls:
                self._running.discard(call_id)
                if outcome is not None:
                    self._recent[call_id] = outcome
                    while len(self._recent) > 16:
                        self._recent.popitem(last=False)
                self._calls.notify_all()
        return outcome

    def finished(self, call_ids: list[str]) -> dict[str, RenderOutcome]:
        """Outcomes of recent calls by call id. On cancel the pool queues this behind the
        cancelled calls: `ray.get` of a cancelled call raises even when the job had already been
        stored, and this answer (it waits until none of these calls is running) says what really
        happened."""
        with self._calls:
            self._calls.wait_for(lambda: not self._running.intersection(call_ids))
            return {c: self._recent[c] for c in call_ids if c in self._recent}

    def accelerator(self) -> dict[str, float]:
        """The model's busy seconds (its stages: text encode, denoise, sr, decode) against the wall
        seconds since this actor's first job began; the rest is idle: CPU tails not overlapped,
        stage-result and adapter I/O, waiting for the pool."""
        with self._calls:
            first = self._first_job_at
        wall = 0.0 if first is None else time.perf_counter() - first
        return {"busy_s": round(self._busy_s, 4), "wall_s": round(wall, 4)}

    def _render(self, job: RenderJob, attempt: int, submitted_at: float | None) -> RenderOutcome:
        with self._clips:   # at most CLIPS_AT_ONCE clips on this actor: wait here holding none
            with self._calls:
                if self._first_job_at is None:
                    self._first_job_at = time.perf_counter()
            return self._render_clip(job, attempt, submitted_at)

    def _render_clip(self, job: RenderJob, attempt: int, submitted_at: float | None) -> RenderOutcome:
        from model import RenderCancelled

        started = time.time()
        timings = {"queue": round(max(0.0, started - (submitted_at or started)), 4)}
        base = dict(self.ids, pid=os.getpid(), attempt=attempt, model_fingerprint=self.pipe.fingerprint,
                    device_type=self.device_type)
        scratch = tempfile.mkdtemp(prefix="horse-render-", dir=self.scratch)
        report = StageReport(attempt)
        try:
            path = os.path.join(scratch, "clip.mp4")
            # Re-rolled with the next seed while delivery QC finds a picture defect (jobs with a Delivery)
            # or the dialogue gate hears the wrong line (jobs with a DialogueCheck).
            (info, poster, rendered, fallback), clip_qc, qc_attempts, dialogue = render_checked(
                job, lambda request: self._render_and_encode(job, request, path, timings, report), path, timings,
                self.gate)

            t0 = time.perf_counter()
            blob = self.store.put_blob(path, ext="mp4")
            poster_ref = self.store.put_blob(poster, ext="jpg")
            timings["upload"] = round(time.perf_counter() - t0, 4)
            qc = make_deliverables(path, job, clip_qc, self.store, scratch, timings) if clip_qc else None
            with self._calls:  # overlapping tails count under the lock
                self.renders += 1
            # A clip at another resolution than asked is not the deliverable: say so.
            status = OK if rendered.resolution == job.request.resolution else DEGRADED
            return RenderOutcome(
                render_key=job.render_key, status=status, blob_uri=blob.uri, sha256=blob.sha256, bytes=blob.bytes,
                poster_uri=poster_ref.uri, timings=timings, duration_s=round(time.time() - started, 3),
                device_seconds=stage_device_seconds(timings, rendered.resolution),
                width=info.width, height=info.height, frames=info.frames, audio_seconds=info.audio_seconds,
                rendered_resolution=rendered.resolution, fallback=fallback, qc=qc, qc_attempts=qc_attempts,
                rendered_seed=rendered.seed, dialogue=dialogue, accelerator=self.accelerator(), **base,
                **_stages(report),
            )
        except Exception as exc:  # noqa: BLE001 - every failure becomes a classified outcome
            if is_sticky_cuda(exc):
                log.error("sticky CUDA error, exiting so the pool restarts this actor: %s", exc)
                os._exit(1)
            if isinstance(exc, RenderCancelled):
                status, error_class, retryable = CANCELLED, CANCELLED_CLASS, False
            else:
                status = FAILED
                error_class, retryable = classify(exc)
            return RenderOutcome(
                render_key=job.render_key, status=status, error_class=error_class,
                error_message=f"{type(exc).__name__}: {exc}"[:2000], retryable=retryable,
                timings=timings, duration_s=round(time.time() - started, 3), **base,
                stages_run=report.stages_run, accelerator=self.accelerator(),
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _render_and_encode(self, job: RenderJob, request, path: str, timings: dict[str, float],
                           report: StageReport):
        """Render `request` (the job's, or a re-roll of it) stage by stage and encode it to `path`:
        (EncodeInfo, poster JPEG, the request it was rendered from, OOM ladder rungs used).
        Stage times add up over the re-rolls of a job: they are what the job cost."""
        job = dataclasses.replace(job, request=request)
        t0 = time.perf_counter()
        with self._model_lock:      # overlapping calls: wait here while the other one renders
            timings["model_wait"] = round(timings.get("model_wait", 0.0) + time.perf_counter() - t0, 4)
            clip = self.staged.render(job, report, should_stop=_ray_cancel_requested,
                                      adapter=self._adapter_for(job, timings))
            self._busy_s += sum(float(report.timings.get(stage, 0.0)) for stage in MODEL_STAGES)
        for stage, seconds in report.timings.items():
            timings[stage] = round(timings.get(stage, 0.0) + float(seconds), 4)
        t0 = time.perf_counter()
        info = encode_mp4(clip, path, self._tags(job), crf=self.encoding.crf, preset=self.encoding.preset)
        poster = poster_jpeg(clip.frames)
        timings["encode"] = round(timings.get("encode", 0.0) + time.perf_counter() - t0, 4)
        return info, poster, report.request, report.fallback

    def _tags(self, job: RenderJob) -> dict[str, str]:
        """mp4 tags: the job's own, then provenance (which the job cannot override)."""
        return {
            **{str(k): str(v) for k, v in job.metadata.items()},
            "render_key": job.render_key,
            "campaign_id": job.campaign_id,
            "shot_id": job.shot_id,
            "variant": job.variant,
            "seed": str(job.request.seed),
            "model_fingerprint": self.pipe.fingerprint,
        }
