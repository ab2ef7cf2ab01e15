"""The two flows the studio runs: `nightly_campaign_render` and `backfill_variants`.

Both go through `render_campaign`: intake → plan (skip what the catalog has) → render the rest on
one RenderPool in chunked task runs → receipts and index committed as results arrive → campaign
version published → summary artifacts and lineage. Reruns of any kind only render what is missing.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version as package_version
from typing import Any, Callable

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError

from catalog import Store
from catalog.receipts import receipt_key
from flows.manifest import Manifest, ManifestError, read_manifest
from flows.plan import Filters, ModelInfo, Plan, PlannedJob, make_plan
from flows.report import RunReport, RunTotals, contact_sheet, failure_rows, summary_markdown
from flows.settings import HorseSettings, load_settings
from horse_actors import PoolConfig, RenderJob, RenderOutcome, RenderPool


class RunFailed(RuntimeError):
    """More shots failed than `render.failure_threshold` allows; the version is still published."""


def code_version() -> str:
    try:
        return f"horse {package_version('horse')}"
    except PackageNotFoundError:  # running from a source tree without installing
        return "horse (source)"


# ---- model info for planning ---------------------------------------------------------------

_MODEL_INFO: dict[str, ModelInfo] = {}


def model_info(settings: HorseSettings) -> ModelInfo:
    """Fingerprint and output sizes of the configured model, computed once per process."""
    from model import HappyHorsePipeline

    resolved = settings.resolved_model()
    cache_key = f"{resolved.checkpoint_dir or 'tiny'}:{resolved.profile}"
    if cache_key not in _MODEL_INFO:
        if resolved.checkpoint_dir is None:
            pipe = HappyHorsePipeline.tiny()
            info = ModelInfo(pipe.fingerprint, resolved.profile, pipe.size_for)
        else:
            described = HappyHorsePipeline.describe(resolved.checkpoint_dir)  # hashes files, loads no tensor
            info = ModelInfo(described["fingerprint"], resolved.profile, described["size_for"])
        _MODEL_INFO[cache_key] = info
    return _MODEL_INFO[cache_key]


def pool_config(settings: HorseSettings) -> PoolConfig:
    resolved = settings.resolved_model()
    ray = settings.ray
    cpu_mode = ray.cpu_mode or resolved.device == "cpu"
    return PoolConfig(
        model=resolved.checkpoint_dir or "tiny",
        store_url=settings.store_url,
        storage_options=settings.storage_options or None,
        num_actors=ray.num_actors,
        gpus_per_actor=ray.gpus_per_actor,
        cpus_per_actor=ray.cpus_per_actor,
        cpu_mode=cpu_mode,
        max_in_flight_per_actor=ray.max_in_flight_per_actor,
        job_deadline_s=ray.job_deadline_s,
        max_retries=ray.max_retries,
        ray_address=ray.address,
        device=None if resolved.device == "auto" else resolved.device,
        dtype=resolved.dtype,
        offload=resolved.offload,
    )


# ---- catalog bookkeeping -------------------------------------------------------------------


def to_render_job(job: PlannedJob, model_fingerprint: str) -> RenderJob:
    from model import RenderRequest

    request = RenderRequest(
        prompt=job.prompt,
        resolution=job.resolution,
        aspect_ratio=job.aspect_ratio,
        seconds=job.seconds,
        seed=job.seed,
        profile=job.key_inputs["profile"],
        image=_load_image(job.image_path) if job.image_path else None,
        **_load_audio(job.audio_path),
    )
    metadata = {
        "horse_render_key": job.render_key,
        "horse_campaign": job.campaign_id,
        "horse_shot": job.shot_id,
        "horse_variant": job.variant,
        "horse_seed": str(job.seed),
        "horse_model_fingerprint": model_fingerprint,
        "language": job.language,
    }
    return RenderJob(job.render_key, request, job.campaign_id, job.shot_id, job.variant, metadata)


def _load_image(path: str):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _load_audio(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    import av
    import numpy as np

    with av.open(path) as container:
        stream = container.streams.audio[0]
        chunks = [frame.to_ndarray() for frame in container.decode(stream)]
        rate = stream.rate
    audio = np.concatenate(chunks, axis=1).astype(np.float32)
    return {"audio": audio, "audio_sample_rate": rate}


def receipt_for(job: PlannedJob, outcome: RenderOutcome, run_id: str, model_fingerprint: str) -> dict[str, Any]:
    return {
        **job.entry(),
        "status": "ok" if outcome.ok else "failed",
        "blob_uri": outcome.blob_uri,
        "sha256": outcome.sha256,
        "bytes": outcome.bytes,
        "poster_uri": outcome.poster_uri,
        "error_class": outcome.error_class,
        "error_message": outcome.error_message,
        "model_fingerprint": model_fingerprint,
        "timings": outcome.timings,
        "gpu_seconds": outcome.duration_s,  # actor wall time: what the shot cost in GPU time
        "duration_s": job.seconds,  # clip length, for GPU-seconds-per-clip-second quotes
        "actor_id": outcome.actor_id,
        "node_id": outcome.node_id,
        "attempt": outcome.attempt,
        "width": outcome.width,
        "height": outcome.height,
        "frames": outcome.frames,
        "run_id": run_id,
    }


def recover_unindexed(store: Store, todo: list[PlannedJob], run_id: str) -> dict[str, dict]:
    """Receipts written by an interrupted run whose index commit never happened: commit them now
    so they count as rendered. One listing of receipts/, then reads only for the matches."""
    if not todo:
        return {}
    present = set(store.root.list_files("receipts"))
    wanted = [receipt_key(job.render_key) for job in todo if receipt_key(job.render_key) in present]
    if not wanted:
        return {}
    receipts = [store.receipts.read(key.rsplit("/", 1)[1].removesuffix(".json")) for key in wanted]
    receipts = [r for r in receipts if r and r["status"] == "ok"]
    store.index.commit(receipts, run_id=run_id, metadata={"operation_reason": "recover-interrupted-run"})
    return {r["render_key"]: r for r in receipts}


# ---- the shared code path ------------------------------------------------------------------


@dataclass
class RunResult:
    run_id: str
    campaigns: dict[str, int]  # campaign -> published version
    totals: RunTotals
    row_errors: list[str]
    failures: list[dict[str, Any]] = field(default_factory=list)
    contact_sheets: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "versions": self.campaigns,
            **self.totals.as_dict(),
            "row_errors": self.row_errors,
            "failures": self.failures,
            "contact_sheets": self.contact_sheets,
        }


def _logger():
    try:
        return get_run_logger()
    except MissingContextError:
        import logging

        return logging.getLogger("horse")


def _flow_run_id() -> str | None:
    context = FlowRunContext.get()
    return str(context.flow_run.id) if context and context.flow_run else None


def _flow_name() -> str | None:
    context = FlowRunContext.get()
    return context.flow.name if context and context.flow else None


@task(name="read-manifest", cache_policy=NO_CACHE)
def intake(manifest_uri: str, storage_options: dict | None) -> Manifest:
    manifest = read_manifest(manifest_uri, storage_options)
    log = _logger()
    log.info("manifest %s: %d rows, %d valid shots, %d invalid rows", manifest.uri, manifest.rows, len(manifest.shots), len(manifest.errors))
    for error in manifest.errors:
        log.warning("skipped %s", error)
    return manifest


@task(name="plan-variants", cache_policy=NO_CACHE)
def plan_variants(manifest: Manifest, settings: HorseSettings, filters: Filters, force: bool) -> tuple[Plan, ModelInfo]:
    info = model_info(settings)
    store = Store(settings.store_url, settings.storage_options)
    plan = make_plan(manifest.shots, info, store, filters, settings.render.input_roots)
    if force:
        plan.cached = {}
    else:
        plan.cached.update(recover_unindexed(store, plan.todo, _flow_run_id() or "script"))
    log = _logger()
    log.info("plan: %d variants, %d already rendered, %d to render", len(plan.jobs), len(plan.cached), len(plan.todo))
    for error in plan.errors:
        log.warning("skipped %s", error)
    return plan, info


@task(name="render-chunk", cache_policy=NO_CACHE)
def render_chunk(chunk_number: int, jobs: list[PlannedJob], run: "_RunState") -> int:
    """Render one chunk on the run's pool; receipts are written per shot, the index per chunk."""
    log = _logger()
    by_key = {job.render_key: job for job in jobs}
    receipts: list[dict] = []

    def on_outcome(outcome: RenderOutcome) -> None:
        job = by_key[outcome.render_key]
        if outcome.status != "cancelled":
            receipt = receipt_for(job, outcome, run.run_id, run.model.fingerprint)
            receipts.append(run.store.write_receipt(receipt))
            run.shot_lineage(job, outcome)
        run.record(job, outcome)
        if outcome.ok:
            log.info("rendered %s/%s %s in %.1fs (attempt %d) -> %s", job.campaign_id, job.shot_id, job.variant,
                     outcome.duration_s or 0, outcome.attempt, outcome.blob_uri)
        else:
            log.warning("%s %s/%s %s: %s: %s", outcome.status, job.campaign_id, job.shot_id, job.variant,
                        outcome.error_class, outcome.error_message)

    render_jobs = [to_render_job(job, run.model.fingerprint) for job in jobs]
    try:
        run.pool.run(render_jobs, on_outcome=on_outcome, cancel_event=run.cancel_event)
    finally:
        if receipts:  # even a cancelled or crashing chunk indexes what it finished
            run.store.index.commit(receipts, run_id=run.run_id)
    log.info("chunk %d: %d shots done", chunk_number, len(receipts))
    return len(receipts)


class _RunState:
    """Per-run objects shared by the chunk tasks (never serialized: tasks run in threads)."""

    def __init__(self, run_id: str, job_name: str, store: Store, pool: RenderPool, model: ModelInfo, totals: RunTotals,
                 report: RunReport, lineage_inputs: list[dict]):
        self.run_id, self.job_name, self.store, self.pool, self.model = run_id, job_name, store, pool, model
        self.totals, self.report, self.lineage_inputs = totals, report, lineage_inputs
        self.cancel_event = threading.Event()
        self.outcomes: dict[str, tuple[PlannedJob, RenderOutcome]] = {}
        self._lock = threading.Lock()

    def shot_lineage(self, job: PlannedJob, outcome: RenderOutcome) -> None:
        """One OpenLineage run per shot variant, parented to the flow run: inputs (manifest,
        model) to output (the clip and its content hash), with where and how it rendered."""
        event = self.store.lineage.complete if outcome.ok else self.store.lineage.fail
        event(
            job_name="render_shot", parent_run_id=self.run_id, parent_job_name=self.job_name,
            inputs=self.lineage_inputs,
            outputs=[{"uri": outcome.blob_uri, "sha256": outcome.sha256, "bytes": outcome.bytes}] if outcome.ok else [],
            runtime={"actor_id": outcome.actor_id, "node_id": outcome.node_id, "gpu_ids": outcome.gpu_ids,
                     "attempt": outcome.attempt, "seed": job.seed, "timings": outcome.timings},
            tags={"campaign": job.campaign_id, "shot": job.shot_id, "variant": job.variant, "render_key": job.render_key},
            error_message=None if outcome.ok else f"{outcome.error_class}: {outcome.error_message}",
        )

    def record(self, job: PlannedJob, outcome: RenderOutcome) -> None:
        with self._lock:
            self.outcomes[job.render_key] = (job, outcome)
            self.totals.add(outcome)
            self.report.progress(self.totals)


def _entries(plan: Plan, outcomes: dict[str, tuple[PlannedJob, RenderOutcome]]) -> dict[str, list[dict]]:
    """Version entries per campaign: every planned variant with its file or its failure."""
    per_campaign: dict[str, list[dict]] = {}
    for job in plan.jobs:
        entry = job.entry()
        cached = plan.cached.get(job.render_key)
        if cached is not None:
            entry |= {"status": "ok", "blob_uri": cached["blob_uri"], "sha256": cached["sha256"], "poster_uri": cached.get("poster_uri")}
        elif job.render_key in outcomes:
            outcome = outcomes[job.render_key][1]
            entry |= {"status": "ok" if outcome.ok else "failed", "blob_uri": outcome.blob_uri, "sha256": outcome.sha256,
                      "poster_uri": outcome.poster_uri, "error_class": outcome.error_class,
                      "error_message": outcome.error_message}
        else:  # the run was cancelled before this variant was rendered
            entry |= {"status": "failed", "blob_uri": None, "sha256": None, "error_class": "NotRendered"}
        per_campaign.setdefault(job.campaign_id, []).append(entry)
    return per_campaign


def _merge_with_previous(store: Store, campaign_id: str, entries: list[dict]) -> list[dict]:
    """A backfill adds variants: the new version keeps every variant of the previous one."""
    latest = store.versions.latest(campaign_id)
    if latest is None:
        return entries
    previous = store.versions.read(campaign_id, latest)["entries"]
    merged = {(e["shot_id"], e["variant"]): e for e in previous}
    merged.update({(e["shot_id"], e["variant"]): e for e in entries})
    return list(merged.values())


def _contact_sheet(store: Store, entries: list[dict]) -> tuple[str | None, bytes | None]:
    posters = []
    for entry in entries[:48]:
        if entry.get("status") == "ok" and entry.get("poster_uri"):
            with store.open_blob(entry["poster_uri"]) as f:
                posters.append((f"{entry['shot_id']} {entry['variant']}", f.read()))
    if not posters:
        return None, None
    jpeg = contact_sheet(posters)
    return store.put_blob(jpeg, ext="jpg").uri, jpeg


def render_campaign(
    manifest_uri: str,
    settings: HorseSettings,
    filters: Filters = Filters(),
    force: bool = False,
    merge_previous: bool = False,
    on_progress: Callable[[RunTotals], None] | None = None,
) -> RunResult:
    """The one code path behind the nightly and the backfill flow; call it inside a flow run."""
    log = _logger()
    flow_run_id = _flow_run_id()
    run_id = flow_run_id or str(uuid.uuid4())
    store = Store(settings.store_url, settings.storage_options)

    manifest = intake(manifest_uri, settings.storage_options or None)
    # Keep the manifest itself: backfills and audits read the exact bytes a version came from.
    manifest_blob = store.put_blob(manifest.data, ext="parquet")
    plan, model = plan_variants(manifest, settings, filters, force)

    totals = RunTotals(planned=len(plan.jobs), cached=len(plan.cached), invalid_rows=len(manifest.errors) + len(plan.errors))
    campaign_label = "-".join(manifest.campaign_ids) or "empty"
    report = RunReport(campaign_label, total=len(plan.jobs), publish=flow_run_id is not None, on_progress=on_progress)
    report.start(totals)
    resolved = settings.resolved_model()
    lineage_inputs = [{"uri": manifest_blob.uri, "version": manifest.sha256},
                      {"uri": resolved.checkpoint_dir or f"model/{resolved.name}", "version": model.fingerprint}]
    job_name = _flow_name() or "render_campaign"
    store.lineage.start(run_id=run_id, job_name=job_name, job_type="JOB", inputs=lineage_inputs,
                        tags={"campaigns": ",".join(manifest.campaign_ids), "model_fingerprint": model.fingerprint})

    todo = plan.todo
    state: _RunState | None = None
    try:
        if todo:
            pool = RenderPool(pool_config(settings))
            state = _RunState(run_id, job_name, store, pool, model, totals, report, lineage_inputs)
            try:
                started = time.perf_counter()
                pool.start()
                log.info("render pool ready in %.1fs: %s", time.perf_counter() - started, pool.actor_stats())
                size = settings.render.chunk_size
                for number, start in enumerate(range(0, len(todo), size), start=1):
                    render_chunk.with_options(name=f"render-chunk-{number}")(number, todo[start:start + size], state)
            finally:
                pool.shutdown()
        outcomes = state.outcomes if state else {}
        report.progress(totals, force=True)

        result = RunResult(run_id, {}, totals, [str(e) for e in manifest.errors] + plan.errors)
        failures = [(job.entry(), outcome) for job, outcome in outcomes.values() if not outcome.ok]
        result.failures = failure_rows(failures)
        report.failures(result.failures)
        for campaign_id, entries in _entries(plan, outcomes).items():
            if merge_previous:
                entries = _merge_with_previous(store, campaign_id, entries)
            number = store.versions.publish(
                campaign_id, entries, manifest_uri=manifest_blob.uri, manifest_sha256=manifest.sha256,
                model_fingerprint=model.fingerprint, code_version=code_version(), run_id=run_id,
            )
            result.campaigns[campaign_id] = number
            sheet_uri, sheet = _contact_sheet(store, entries)
            if sheet_uri:
                result.contact_sheets[campaign_id] = sheet_uri
            version_uri = store.versions.list(campaign_id)[-1].uri
            report.summary(summary_markdown(campaign_id, number, totals, store.url, version_uri, result.row_errors, sheet_uri, sheet))
            log.info("published %s version %d", campaign_id, number)
        outputs = [{"uri": o.blob_uri, "sha256": o.sha256, "bytes": o.bytes} for _, o in outcomes.values() if o.ok]
        store.lineage.complete(run_id=run_id, job_name=job_name, job_type="JOB", inputs=lineage_inputs, outputs=outputs,
                               tags={"campaigns": ",".join(manifest.campaign_ids), "model_fingerprint": model.fingerprint})
    except BaseException as exc:
        if state is not None:
            state.cancel_event.set()
        store.lineage.fail(run_id=run_id, job_name=job_name, job_type="JOB", inputs=lineage_inputs,
                           error_message=f"{type(exc).__name__}: {exc}")
        raise

    failed_fraction = totals.failed / max(len(todo), 1)
    if totals.failed and failed_fraction > settings.render.failure_threshold:
        raise RunFailed(
            f"{totals.failed} of {len(todo)} shots failed ({failed_fraction:.0%} > threshold "
            f"{settings.render.failure_threshold:.0%}); version(s) {result.campaigns} published with them marked failed"
        )
    return result


# ---- the flows -----------------------------------------------------------------------------
# Chunks run one after another on the run's single pool (the pool keeps every actor busy within a
# chunk); task runs exist so the UI shows progress in tens of steps, never one per shot.


@flow(name="nightly-campaign-render", log_prints=True)
def nightly_campaign_render(
    manifest_uri: str,
    store_url: str | None = None,
    model: str | None = None,
    config_file: str | None = None,
    ray_address: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Render every shot variant of a campaign manifest that the catalog does not have yet, then
    publish the campaign's next version. Parameters carry URIs and options, never shot lists."""
    settings = flow_settings(config_file, store_url, model, ray_address)
    return render_campaign(manifest_uri, settings, force=force, on_progress=_progress_listener).as_dict()


@flow(name="backfill-variants", log_prints=True)
def backfill_variants(
    campaign_id: str,
    languages: list[str] | None = None,
    aspect_ratios: list[str] | None = None,
    takes: int | None = None,
    shot_ids: list[str] | None = None,
    store_url: str | None = None,
    model: str | None = None,
    config_file: str | None = None,
    ray_address: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Render extra variants (languages, aspect ratios, takes) of a published campaign from the
    manifest its latest version was made from; the new version keeps every earlier variant."""
    settings = flow_settings(config_file, store_url, model, ray_address)
    filters = backfill_filters(languages, aspect_ratios, takes, shot_ids)
    return run_backfill(campaign_id, settings, filters, force, on_progress=_progress_listener).as_dict()


def flow_settings(config_file, store_url, model, ray_address) -> HorseSettings:
    return load_settings(config_file, store_url=store_url, model=model,
                         ray={"address": ray_address} if ray_address else None)


# The CLI draws a progress bar from the flow's progress; a flow parameter cannot carry a callback.
_progress_listener: Callable[[RunTotals], None] | None = None


def set_progress_listener(listener: Callable[[RunTotals], None] | None) -> None:
    global _progress_listener
    _progress_listener = listener


def backfill_filters(languages, aspect_ratios, takes, shot_ids) -> Filters:
    from model.prompt import normalize_language

    return Filters(
        languages=tuple(normalize_language(code) for code in languages) if languages else None,
        aspect_ratios=tuple(aspect_ratios) if aspect_ratios else None,
        takes=takes,
        shot_ids=tuple(shot_ids) if shot_ids else None,
    )


def run_backfill(campaign_id: str, settings: HorseSettings, filters: Filters, force: bool = False,
                 on_progress: Callable[[RunTotals], None] | None = None) -> RunResult:
    store = Store(settings.store_url, settings.storage_options)
    latest = store.versions.latest(campaign_id)
    if latest is None:
        raise ManifestError(f"campaign {campaign_id!r} has no published version to backfill; render its manifest first")
    manifest_uri = store.versions.read(campaign_id, latest)["manifest_uri"]
    return render_campaign(manifest_uri, settings, filters, force=force, merge_previous=True, on_progress=on_progress)
