"""One campaign run, the code path shared by the nightly and the backfill flow: intake → plan
(skip what the catalog has) → render the rest on one RenderPool in chunked task runs → receipts
and index committed as results arrive → campaign version published → artifacts and lineage.
Reruns of any kind only render what is missing."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version as package_version
from typing import Any, Callable

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError

from catalog import Store
from flows.jobs import (merge_with_previous, model_info, pool_config, publish_contact_sheet, receipt_for,
                        to_render_job, version_entries)
from flows.manifest import Manifest, read_manifest
from flows.plan import Filters, ModelInfo, Plan, PlannedJob, make_plan
from flows.report import RunReport, RunTotals, failure_rows, summary_markdown
from flows.settings import HorseSettings
from horse_actors import RenderJob, RenderOutcome, RenderPool


class RunFailed(RuntimeError):
    """More shots failed than `render.failure_threshold` allows; the version is still published."""


def code_version() -> str:
    try:
        return f"horse {package_version('horse')}"
    except PackageNotFoundError:  # running from a source tree without installing
        return "horse (source)"


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
        plan.cached.update(store.recover_unindexed([job.render_key for job in plan.todo], _flow_run_id() or "script"))
    log = _logger()
    log.info("plan: %d variants, %d already rendered, %d to render", len(plan.jobs), len(plan.cached), len(plan.todo))
    for error in plan.errors:
        log.warning("skipped %s", error)
    return plan, info


class RenderStream:
    """The pool renders every to-do job as one continuous stream on a background thread, so no
    GPU idles at a chunk boundary; outcomes come back to the flow's thread through a queue, and
    each chunk task takes its own (outcomes of later chunks wait in `_early`)."""

    _END = object()

    def __init__(self, pool: RenderPool, jobs: list[RenderJob]):
        self.pool = pool
        self.cancel = threading.Event()
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue()
        self._early: dict[str, RenderOutcome] = {}
        self._ended = False
        self._thread = threading.Thread(target=self._render, args=(jobs,), name="horse-render-stream", daemon=True)
        self._thread.start()

    def _render(self, jobs: list[RenderJob]) -> None:
        try:
            self.pool.run(jobs, on_outcome=self._queue.put, cancel_event=self.cancel)
        except BaseException as exc:  # handed to the flow thread, which raises it
            self.error = exc
        finally:
            self._queue.put(self._END)

    def take(self, wanted: set[str]) -> RenderOutcome | None:
        """The next outcome for one of `wanted`; None once the stream ended without it."""
        while True:
            for key in wanted & self._early.keys():
                return self._early.pop(key)
            if self._ended:
                if self.error is not None:
                    raise self.error
                return None
            try:  # a short timeout keeps the main thread responsive to signals (cancel)
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is self._END:
                self._ended = True
            else:
                self._early[item.render_key] = item

    def stop(self) -> None:
        """Cancel what is still queued or running and wait for the pool to let go of it."""
        self.cancel.set()
        self._thread.join()


@task(name="render-chunk", cache_policy=NO_CACHE)
def render_chunk(chunk_number: int, jobs: list[PlannedJob], run: "_RunState") -> int:
    """Collect one chunk's renders from the run's stream: a receipt and a lineage event per shot
    as it arrives, one index commit for the chunk."""
    log = _logger()
    pending = {job.render_key: job for job in jobs}
    receipts: list[dict] = []
    try:
        while pending:
            outcome = run.stream.take(set(pending))
            if outcome is None:  # the stream was cancelled before these were rendered
                break
            job = pending.pop(outcome.render_key)
            if outcome.status != "cancelled":
                receipts.append(run.store.write_receipt(receipt_for(job, outcome, run.run_id, run.model.fingerprint)))
                run.shot_lineage(job, outcome)
            run.record(job, outcome)
            if outcome.ok:
                log.info("rendered %s/%s %s in %.1fs (attempt %d) -> %s", job.campaign_id, job.shot_id, job.variant,
                         outcome.duration_s or 0, outcome.attempt, outcome.blob_uri)
            else:
                log.warning("%s %s/%s %s: %s: %s", outcome.status, job.campaign_id, job.shot_id, job.variant,
                            outcome.error_class, outcome.error_message)
    finally:
        if receipts:  # even a cancelled or crashing chunk indexes what it finished
            run.store.index.commit(receipts, run_id=run.run_id)
    log.info("chunk %d: %d shots done", chunk_number, len(receipts))
    return len(receipts)


class _RunState:
    """Per-run objects shared by the chunk tasks (never serialized: tasks run in this process).
    Only the flow's thread touches it: the render stream hands outcomes over through its queue."""

    def __init__(self, run_id: str, job_name: str, store: Store, stream: RenderStream, model: ModelInfo,
                 totals: RunTotals, report: RunReport, lineage_inputs: list[dict]):
        self.run_id, self.job_name, self.store, self.stream, self.model = run_id, job_name, store, stream, model
        self.totals, self.report, self.lineage_inputs = totals, report, lineage_inputs
        self.outcomes: dict[str, tuple[PlannedJob, RenderOutcome]] = {}

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
        self.outcomes[job.render_key] = (job, outcome)
        self.totals.add(outcome)
        self.report.progress(self.totals)


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
            try:
                started = time.perf_counter()
                pool.start()
                log.info("render pool ready in %.1fs: %s", time.perf_counter() - started, pool.actor_stats())
                stream = RenderStream(pool, [to_render_job(job, model.fingerprint) for job in todo])
                state = _RunState(run_id, job_name, store, stream, model, totals, report, lineage_inputs)
                try:
                    # Task runs give the UI progress in tens of steps, never one per shot; the
                    # stream keeps rendering the next chunk while one is being collected.
                    size = settings.render.chunk_size
                    for number, start in enumerate(range(0, len(todo), size), start=1):
                        render_chunk.with_options(name=f"render-chunk-{number}")(number, todo[start:start + size], state)
                finally:
                    stream.stop()
            finally:
                pool.shutdown()
        outcomes = state.outcomes if state else {}
        report.progress(totals, force=True)

        result = RunResult(run_id, {}, totals, [str(e) for e in manifest.errors] + plan.errors)
        failures = [(job.entry(), outcome) for job, outcome in outcomes.values() if not outcome.ok]
        result.failures = failure_rows(failures)
        report.failures(result.failures)
        for campaign_id, entries in version_entries(plan, outcomes).items():
            if merge_previous:
                entries = merge_with_previous(store, campaign_id, entries)
            sheet_uri, sheet = publish_contact_sheet(store, entries)  # before the version, which lists it
            number = store.versions.publish(
                campaign_id, entries, manifest_uri=manifest_blob.uri, manifest_sha256=manifest.sha256,
                model_fingerprint=model.fingerprint, code_version=code_version(), run_id=run_id,
                contact_sheet_uri=sheet_uri,
            )
            result.campaigns[campaign_id] = number
            if sheet_uri:
                result.contact_sheets[campaign_id] = sheet_uri
            version_uri = store.version_uri(campaign_id, number)
            report.summary(summary_markdown(campaign_id, number, totals, store.url, version_uri, result.row_errors, sheet_uri, sheet))
            log.info("published %s version %d", campaign_id, number)
        outputs = [{"uri": o.blob_uri, "sha256": o.sha256, "bytes": o.bytes} for _, o in outcomes.values() if o.ok]
        store.lineage.complete(run_id=run_id, job_name=job_name, job_type="JOB", inputs=lineage_inputs, outputs=outputs,
                               tags={"campaigns": ",".join(manifest.campaign_ids), "model_fingerprint": model.fingerprint})
    except BaseException as exc:  # a cancel (SIGTERM) too: the pool has already stopped its actors
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


