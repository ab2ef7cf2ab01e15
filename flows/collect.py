"""Collecting renders into the catalog as they arrive: a receipt and a lineage event per shot
variant (the receipt is the durable mark that the render exists: a rerun that finds it, indexed
or not, skips the shot) and one per destination master, then one index commit per chunk. What a
version entry needs of each outcome goes to the run's ledger (flows.run_ledger), so the driver
holds no outcome however many jobs a run has."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from catalog import Store
from flows.plan import PREVIEW, PROMOTED, PlannedJob
from flows.routing import lineage_model, receipt_fields
from flows.budget import BudgetGuard
from flows.progress import Progress, RunTotals
from flows.report import failure_rows
from flows.run_ledger import RunLedger
from horse_actors import RenderOutcome
from horse_actors.jobs import NOT_ADMITTED

NOT_RENDERED = "NotRendered"  # error class of an entry the run did not get to render
NOT_RENDERED_FIELDS = {"status": "failed", "blob_uri": None, "sha256": None, "error_class": NOT_RENDERED}


@dataclass(frozen=True)
class RunRecord:
    """What every record of one run carries: its id, the job it runs as, its inputs."""

    run_id: str
    job_name: str  # the flow's name, or render_campaign outside a flow
    model_fingerprint: str
    lineage_inputs: tuple[dict, ...]  # the manifest blob and the model, with their versions
    campaigns: tuple[str, ...]

    @property
    def lineage_tags(self) -> dict[str, str]:
        return {"campaigns": ",".join(self.campaigns), "model_fingerprint": self.model_fingerprint}


def delivered(job: PlannedJob, outcome: RenderOutcome) -> dict[str, Any]:
    """What the record says of a finished render: `ok` only when it honoured every input of its
    render key; a clip the OOM ladder rendered at a lower tier is `degraded`, with what was asked
    for and what was delivered, so it is never cached under the requested key."""
    status = outcome.status if outcome.status in ("ok", "degraded") else "failed"
    return {"status": status, "resolution": job.resolution, "rendered_resolution": outcome.rendered_resolution,
            "fallback": "+".join(outcome.fallback) or None}


def staged(job: PlannedJob, outcome: RenderOutcome) -> dict[str, Any]:
    """What links a preview to its promote in receipts and version entries. A preview names its
    base latent by stage key only (GC keeps it `gc.preview_latent_days`); a promoted clip names
    its preview and the base latent it was finished from by URI, so its version keeps that latent,
    and says whether the latent was gone and the base stage rendered again."""
    base = outcome.stage_results.get("base") if outcome.blob_uri else None
    if job.role == PREVIEW and base:
        return {"stage_key": base["stage_key"]}
    if job.role == PROMOTED and outcome.blob_uri:
        rerendered = base_rerendered(outcome)
        latent = {} if rerendered or not base else {"stage_result_uri": base["uri"],
                                                    "stage_result_sha256": base["sha256"]}
        return {"promoted_from": {**(job.promoted_from or {}), **latent}, "base_rerendered": rerendered}
    return {}


def collected_fields(job: PlannedJob, outcome: RenderOutcome) -> dict:
    """What the version entry of `job` takes from this run's final outcome of it: the file or the
    failure. The run keeps these (flows.run_ledger), not the outcome, until it publishes."""
    if outcome.error_class == NOT_ADMITTED:  # never started: "not rendered: budget (...)"
        return {**NOT_RENDERED_FIELDS, "error_message": outcome.error_message}
    return {**delivered(job, outcome), "blob_uri": outcome.blob_uri, "sha256": outcome.sha256,
            "poster_uri": outcome.poster_uri, "error_class": outcome.error_class,
            "error_message": outcome.error_message, "rendered_seed": outcome.rendered_seed,
            "qc_status": outcome.qc_status, **staged(job, outcome)}


def base_rerendered(outcome: RenderOutcome) -> bool:
    """Whether any attempt of the render ran the base stage (a promote should not need to)."""
    return any("base" in stages for stages in outcome.stages_run.values())


def receipt_for(job: PlannedJob, outcome: RenderOutcome, run: RunRecord) -> dict[str, Any]:
    return {
        **job.entry(),
        **delivered(job, outcome),
        **staged(job, outcome),
        "stages_run": outcome.stages_run or None,  # {try: stages started}: "1", "1+tiled_decode", "2"
        "resumed_from": outcome.resumed_from,
        "stage_results": outcome.stage_results or None,
        "blob_uri": outcome.blob_uri,
        "sha256": outcome.sha256,
        "bytes": outcome.bytes,
        "poster_uri": outcome.poster_uri,
        "error_class": outcome.error_class,
        "error_message": outcome.error_message,
        "model_fingerprint": run.model_fingerprint,
        "timings": outcome.timings,
        "gpu_seconds": outcome.duration_s,  # actor wall time of the attempt
        "device_seconds": outcome.device_seconds or None,  # per cost stage: what quotes learn from
        "device_type": outcome.device_type,
        "profile": job.profile,
        "duration_s": job.seconds,  # clip length: quotes are per clip-second
        "actor_id": outcome.actor_id,
        "node_id": outcome.node_id,
        "attempt": outcome.attempt,
        "width": outcome.width,
        "height": outcome.height,
        "frames": outcome.frames,
        "run_id": run.run_id,
        "rendered_seed": outcome.rendered_seed,
        "qc_status": outcome.qc_status,
        "qc": outcome.qc,
        "qc_attempts": outcome.qc_attempts or None,
        "dialogue_status": outcome.dialogue_status,
        "dialogue": outcome.dialogue,
        **receipt_fields(job, outcome),  # an API render: provider, model id, task, usage, cost
        **({"adapter": job.adapter.record()} if job.adapter else {}),
    }


def record_render(store: Store, run: RunRecord, job: PlannedJob, outcome: RenderOutcome) -> dict | None:
    """Receipt and lineage event of one finished render; None for a cancelled one (nothing to
    record: it is simply still missing)."""
    if outcome.status == "cancelled":
        return None
    receipt = store.write_receipt(receipt_for(job, outcome, run))
    # One OpenLineage run per shot variant, parented to the flow run: inputs (manifest, model) to
    # output (the clip and its content hash), with where and how it rendered.
    stored = outcome.blob_uri is not None
    event = store.lineage.complete if stored else store.lineage.fail
    tags = {"campaign": job.campaign_id, "shot": job.shot_id, "variant": job.variant, "render_key": job.render_key}
    inputs = list(run.lineage_inputs)
    if job.api_request is not None:  # the provider's model in place of the local one
        inputs[1:] = [lineage_model(job)]
        tags |= {"backend": job.backend, "provider_model": job.api_request.model,
                 "provider_task_id": getattr(outcome, "task_id", None) or ""}
    if job.adapter is not None:  # the brand adapter is an input like the model: its blob, by its sha256
        inputs.append({"uri": job.adapter.uri, "version": job.adapter.sha256})
        tags |= {"adapter": job.adapter.name, "adapter_strength": job.adapter.strength}
    rendered = event(
        job_name="render_shot", parent_run_id=run.run_id, parent_job_name=run.job_name,
        inputs=[*inputs, *promoted_inputs(job, outcome)],
        outputs=[{"uri": outcome.blob_uri, "sha256": outcome.sha256, "bytes": outcome.bytes}] if stored else [],
        runtime={"actor_id": outcome.actor_id, "node_id": outcome.node_id, "gpu_ids": outcome.gpu_ids,
                 "attempt": outcome.attempt, "seed": job.seed, "timings": outcome.timings,
                 "rendered_seed": outcome.rendered_seed, "qc_attempts": outcome.qc_attempts or None,
                 "dialogue": outcome.dialogue},
        tags={**tags, **{k: v for k, v in delivered(job, outcome).items() if v is not None},
              **({"qc": outcome.qc_status} if outcome.qc_status else {}),
              **({"dialogue": outcome.dialogue_status} if outcome.dialogue_status else {})},
        error_message=None if stored else f"{outcome.error_class}: {outcome.error_message}",
    )
    if stored:
        record_masters(store, rendered.run.runId, tags, outcome)
    return receipt


def promoted_inputs(job: PlannedJob, outcome: RenderOutcome) -> list[dict]:
    """Lineage inputs of a promoted clip: its preview clip, and the preview's base latent when
    the clip was finished from it."""
    if job.role != PROMOTED or not job.promoted_from:
        return []
    origin = {**job.promoted_from, **staged(job, outcome).get("promoted_from", {})}
    inputs = [{"uri": origin["blob_uri"], "version": origin.get("sha256")}]
    if origin.get("stage_result_uri"):
        inputs.append({"uri": origin["stage_result_uri"], "version": origin.get("stage_result_sha256")})
    return inputs


def record_masters(store: Store, render_run_id: str, tags: dict[str, str], outcome: RenderOutcome) -> None:
    """One lineage run per destination master, parented to the render: the clip's blob in, the
    master's blob out with its QC; a master that could not be made is a failed run saying why."""
    clip = {"uri": outcome.blob_uri, "version": outcome.sha256}
    for destination, result in (outcome.qc or {}).items():
        checks = {name: {k: v for k, v in c.items() if k != "stretches"} for name, c in result["checks"].items()}
        master = result["master"]
        common = dict(job_name="make_master", parent_run_id=render_run_id, parent_job_name="render_shot",
                      parent_namespace="horse", inputs=[clip],
                      tags={**tags, "destination": destination, "qc": "passed" if result["passed"] else "failed"})
        if master is None:
            store.lineage.fail(**common, error_message=f"no {destination} master: {checks['master']['limit']}")
            continue
        store.lineage.complete(**common, outputs=[{
            "uri": master["uri"], "sha256": master["sha256"], "bytes": master["bytes"],
            "qc": {"destination": destination, "passed": result["passed"], "checks": checks}}])


def describe(job: PlannedJob, outcome: RenderOutcome) -> str:
    """One log line per finished shot."""
    if outcome.ok:
        said = outcome.dialogue or {}
        heard = {"passed": "", "unchecked": f", dialogue unchecked ({said.get('reason')})",
                 "dialogue_failed": f", DIALOGUE FAILED after {said.get('attempts')} attempts ({said.get('reason')}; "
                                    f"heard {said.get('transcript')!r})"}.get(said.get("status"), "")
        resumed = f", from the stored {outcome.resumed_from} result" if outcome.resumed_from else ""
        if job.role == PROMOTED and base_rerendered(outcome):
            resumed += ", base stage rendered again: the preview's latent was gone"
        return (f"rendered {job.campaign_id}/{job.shot_id} {job.variant} in {outcome.duration_s or 0:.1f}s "
                f"(attempt {outcome.attempt}{resumed}){heard} -> {outcome.blob_uri}")
    if outcome.status == "degraded":
        return (f"degraded {job.campaign_id}/{job.shot_id} {job.variant}: rendered at {outcome.rendered_resolution} "
                f"instead of {job.resolution} (fallback {'+'.join(outcome.fallback)}) -> {outcome.blob_uri}")
    return f"{outcome.status} {job.campaign_id}/{job.shot_id} {job.variant}: {outcome.error_class}: {outcome.error_message}"


def collect(outcomes: Iterable[tuple[PlannedJob, RenderOutcome]], chunk_size: int, store: Store, run: RunRecord,
            totals: RunTotals, progress: Progress, guard: BudgetGuard, ledger: RunLedger,
            commit: Callable[[list[dict], int], None], log: logging.Logger) -> list[dict]:
    """Collect each outcome as it arrives: its receipt and lineage event, the run's totals, and
    what its version entry needs (into `ledger`); `commit` indexes each `chunk_size` outcomes'
    receipts in one go. Holds one chunk's receipts at a time, never the run's outcomes; returns
    the failures table's rows."""
    receipts: list[dict] = []
    failures: list[dict] = []
    seen = number = 0

    def end_chunk() -> None:
        nonlocal receipts, number
        ledger.commit()
        if receipts:
            number += 1
            commit(receipts, number)
        receipts = []

    for job, outcome in outcomes:
        if outcome.error_class == NOT_ADMITTED:  # never started: nothing to record
            outcome = dataclasses.replace(outcome, error_message=guard.reason)
        elif not outcome.ok:
            failures += failure_rows([(job.entry(), outcome)])
        receipt = record_render(store, run, job, outcome)
        if receipt is not None:
            receipts.append(receipt)
        (log.info if outcome.ok else log.warning)(describe(job, outcome))
        output = {"uri": outcome.blob_uri, "sha256": outcome.sha256, "bytes": outcome.bytes} if outcome.ok else None
        ledger.add(job.render_key, collected_fields(job, outcome), outcome.ok, output)
        totals.add(outcome)
        progress.update(totals)
        seen += 1
        if seen % chunk_size == 0:
            end_chunk()
    end_chunk()
    return failures
