"""One campaign run, the code path shared by the nightly and the backfill flow. Its data flows one
way: read the manifest → plan (skip what the catalog has) → render the rest as one stream on a
RenderPool → collect each render as it arrives (receipt, lineage event; one index commit per
chunk) → publish each campaign's version → report. Reruns of any kind only render what is missing.

Tasks take serialisable inputs (settings, manifests, plans, records); the live objects of a run
(the pool, its stream, the progress display) stay in the flow's own code.
"""

from __future__ import annotations

import functools
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError

from catalog import Store
from catalog.approvals import FORCED, new_event, slot_of
from flows.budget import (Budget, BudgetGuard, OverBudget, api_usd_by_campaign, budget_campaigns, budgets_for,
                          create_spend_table, over_budget)
from flows.collect import RunRecord, collect
from flows.cost import Quote, cost_model, quote_plan
from flows.destinations import RunDestinations, run_destinations
from flows.dialogue import DialoguePolicy, dialogue_policy
from flows.manifest import Manifest, read_manifest
from flows.plan import Filters, Plan, PlannedJob, make_plan, model_info
from flows.progress import Progress, RunTotals
from flows.publish import PublishedVersion, publish_version, version_entries
from flows.render_stream import RenderStream, pool_config, start_pool, to_render_job
from flows.run_ledger import RunLedger
from flows.routing import Routes
from flows.report import (artifact_key, create_failures_table, create_qc_table, create_summary, qc_failures,
                          qc_markdown, qc_table_rows, summary_markdown)
from flows.settings import HorseSettings, reviewer_name
from horse_actors import RenderPool


class RunFailed(RuntimeError):
    """More shots failed than `render.failure_threshold` allows; the version is still published."""


@dataclass
class RunResult:
    run_id: str
    campaigns: dict[str, int]  # campaign -> published version
    totals: RunTotals
    row_errors: list[str]
    failures: list[dict[str, Any]] = field(default_factory=list)
    contact_sheets: dict[str, str] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)  # what a person should know, one line each
    spend: list[dict[str, Any]] = field(default_factory=list)  # the run's rows of the spend table
    budget_stop: str = ""  # "not rendered: budget (...)" when a budget stopped the run
    qc_failures: list[dict[str, Any]] = field(default_factory=list)  # clip x destination that failed delivery QC

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "versions": self.campaigns,
            **self.totals.as_dict(),
            "row_errors": self.row_errors,
            "failures": self.failures,
            "contact_sheets": self.contact_sheets,
            "notices": self.notices,
            "spend": self.spend,
            "budget_stop": self.budget_stop,
            "qc_failures": self.qc_failures,
        }


def forced_event(entry: dict, who: str, run_id: str) -> dict:
    slot, take, _ = slot_of(entry["variant"])
    return new_event(entry["campaign_id"], entry["shot_id"], slot, FORCED, entry=entry, take=take, who=who,
                     note=f"approved take rendered again on purpose (--force-approved) in run {run_id}",
                     source="render", campaign_version=None, run_id=run_id, forced=True)


def _logger():
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("horse")


# ---- tasks: each a step of the run, named for what it does ---------------------------------


@task(name="read-manifest", cache_policy=NO_CACHE)
def read_manifest_rows(manifest_uri: str, settings: HorseSettings, destinations: RunDestinations) -> Manifest:
    adapters = Store(settings.store_url, settings.storage_options).adapters.names()
    manifest = read_manifest(manifest_uri, settings.storage_options or None, settings.render.input_roots,
                             destinations.known, settings.routing.backends, adapters)
    log = _logger()
    log.info("manifest %s: %d rows, %d valid shots, %d invalid rows", manifest.uri, manifest.rows,
             len(manifest.shots), len(manifest.errors))
    for error in manifest.errors:
        log.warning("skipped %s", error)
    return manifest


@task(name="plan-variants", cache_policy=NO_CACHE)
def plan_variants(manifest: Manifest, settings: HorseSettings, filters: Filters, force: bool, run_id: str,
                  destinations: RunDestinations, dialogue: DialoguePolicy) -> Plan:
    store = Store(settings.store_url, settings.storage_options)
    plan = make_plan(manifest.shots, model_info(settings), store, filters, destinations,
                     Routes.from_settings(settings.routing), dialogue, settings.render.adapter,
                     settings.render.adapter_strength)
    if force:
        plan.cached = {}
    else:
        plan.cached.update(store.recover_unindexed([job.render_key for job in plan.todo], run_id))
    log = _logger()
    if plan.lifted:  # on record before anything renders: who forced which approved take, in which run
        who = settings.review.user or reviewer_name()
        store.approvals.record([forced_event(entry, who, run_id) for entry in plan.lifted])
        log.warning("forced: %d approved variant(s) rendered again: %s", len(plan.lifted),
                    ", ".join(f"{e['shot_id']}/{e['variant']}" for e in plan.lifted))
    if plan.kept:
        log.info("kept (approved): %s", ", ".join(f"{e['shot_id']}/{e['variant']}" for e in plan.kept))
    log.info("plan: %d variants, %d already rendered, %d to render", len(plan.jobs), len(plan.cached), len(plan.todo))
    for error in plan.errors:
        log.warning("skipped %s", error)
    return plan


def quote_and_check_budgets(plan: Plan, settings: HorseSettings, allow_over_budget: bool,
                            routes: Routes | None = None) -> tuple[Quote, list[Budget]]:
    """The to-do jobs' quote and the budgets the run is held to; a quote over one (GPU time, plus
    the quoted USD of API clips for a USD budget; `routes`: the run's) stops the run here
    (OverBudget) unless allow_over_budget, which renders what fits. Not a task: Prefect would walk
    the plan's every job as a task input."""
    store = Store(settings.store_url, settings.storage_options)
    quote = quote_plan(plan, cost_model(store, settings, plan.model_fingerprint))
    todo = plan.todo
    campaigns, api_only = budget_campaigns(quote, todo)
    budgets = budgets_for(settings, campaigns, quote.model.device_type, store.spend.by_campaign(), api_only)
    api_usd = api_usd_by_campaign(budgets, todo, routes or Routes.from_settings(settings.routing))
    log = _logger()
    low, high = quote.band
    log.info("quote: %.3f GPU-hours (%.3f-%.3f) on %s, %s", quote.gpu_seconds / 3600, low / 3600, high / 3600,
             quote.model.device_type or "an unknown device", quote.basis)
    over = over_budget(budgets, quote, api_usd)
    if over and not allow_over_budget:
        raise OverBudget(f"{over[0]} (--allow-over-budget starts the run anyway: it renders, most important "
                         "first, until the budget is reached)")
    for line in over:
        log.warning("%s: rendering until the budget is reached", line)
    return quote, budgets


@task(name="index-chunk", cache_policy=NO_CACHE)
def index_chunk(receipts: list[dict], settings: HorseSettings, run_id: str) -> int:
    """One Delta commit for a chunk's receipts (and one for their delivery QC rows): the UI follows
    a run in tens of steps, never one task run per shot."""
    store = Store(settings.store_url, settings.storage_options)
    # QC rows first: the render index is what marks a clip done, and an interrupted commit is
    # redone by the next run (Store.recover_unindexed), QC rows included.
    store.qc.commit(receipts, run_id=run_id)
    store.index.commit(receipts, run_id=run_id)
    return len(receipts)


@task(name="publish-version", cache_policy=NO_CACHE)
def publish(campaign_id: str, entries: list[dict], settings: HorseSettings, manifest_uri: str, manifest_sha256: str,
            run: RunRecord, merge_previous: bool) -> PublishedVersion:
    store = Store(settings.store_url, settings.storage_options)
    published = publish_version(store, campaign_id, entries, manifest_uri=manifest_uri, manifest_sha256=manifest_sha256,
                                model_fingerprint=run.model_fingerprint, run_id=run.run_id, merge_previous=merge_previous)
    _logger().info("published %s version %d", campaign_id, published.number)
    return published


@task(name="report-run", cache_policy=NO_CACHE)
def report(label: str, failures: list[dict], summaries: dict[str, str], qc_tables: dict[str, list[dict]]) -> None:
    """The failures table, and per campaign its summary and its delivery QC table, as Prefect artifacts."""
    if failures:
        create_failures_table(label, failures)
    for campaign_id, markdown in summaries.items():
        create_summary(campaign_id, markdown)
    for campaign_id, rows in qc_tables.items():
        create_qc_table(campaign_id, rows)


# ---- the run ----------------------------------------------------------------------------------


def record_spend(store: Store, guard: BudgetGuard, run_id: str, settings: HorseSettings,
                 quiet: bool = False) -> list[dict]:
    """Append the run's spend to the spend table and return its rows. `quiet` (a run that is
    failing anyway): a store error is logged, so that it does not hide the run's own error."""
    rows = guard.rows(run_id, settings)
    try:
        store.spend.record(rows, run_id=run_id)
    except Exception as exc:  # noqa: BLE001
        if not quiet:
            raise
        _logger().error("the spend of run %s could not be recorded: %s", run_id, exc)
    return rows


def render_and_collect(todo: list[PlannedJob], settings: HorseSettings, run: RunRecord, store: Store,
                       totals: RunTotals, progress: Progress, guard: BudgetGuard, ledger: RunLedger) -> list[dict]:
    """Render the to-do jobs as one stream and collect each as it arrives into `ledger`; returns
    the failures table's rows. `guard` counts the spend and stops dispatching at a budget. A
    cancel or crash stops the pool; receipts already written are indexed by the next run
    (`Store.recover_unindexed`)."""
    if not todo:
        return []
    log = _logger()
    with RenderPool(pool_config(settings)) as pool:
        if any(job.backend == "local" for job in todo):  # API-only runs load no model
            log.info(start_pool(pool))
        routes = Routes.from_settings(settings.routing)
        providers = {job.backend: routes.provider(job.backend) for job in todo if job.backend != "local"}
        # Dispatch order as RenderPool.run would take it from a list (highest priority first, equals
        # in plan order), so that the stream can take the jobs one at a time.
        ordered = sorted(todo, key=lambda job: job.dispatch_priority, reverse=True)
        to_job = functools.partial(to_render_job, model_fingerprint=run.model_fingerprint)

        def commit(receipts: list[dict], number: int) -> None:
            index_chunk.with_options(name=f"index-chunk-{number}")(receipts, settings, run.run_id)

        with RenderStream(pool, ordered, to_job, providers, admit=guard.admit, on_outcome=guard.settle) as stream:
            return collect(stream.outcomes(), settings.render.chunk_size, store, run, totals, progress, guard, ledger,
                           commit, log)


def delivery_qc(store: Store, plan: Plan, ledger: RunLedger) -> dict:
    """QC results of the plan's keys that have destinations, read from the campaigns they can be
    in (the plan's, and those their cached renders were filed under) rather than the whole table;
    a delivered key found in none of them (a concurrent run of another campaign filed it first)
    is looked up everywhere."""
    keys = [job.render_key for job in plan.jobs if job.destinations]
    campaigns = {job.campaign_id for job in plan.jobs} | {row["campaign_id"] for row in plan.cached.values()}
    qc = store.qc.results(keys, campaigns=campaigns)
    stray = [k for k in keys if k not in qc and (k in plan.cached or ledger.ok(k))]
    if stray:
        qc.update(store.qc.results(stray))
    return qc


def render_campaign(manifest_uri: str, settings: HorseSettings, filters: Filters = Filters(), force: bool = False,
                    merge_previous: bool = False, allow_over_budget: bool = False) -> RunResult:
    """The one code path behind the nightly and the backfill flow; call it inside a flow run."""
    run_id = current_run_id()
    destinations = run_destinations(settings)  # once per run; jobs carry them to the actors
    manifest = read_manifest_rows(manifest_uri, settings, destinations)
    plan = plan_variants(manifest, settings, filters, force, run_id, destinations, dialogue_policy(settings))
    return run_plan(manifest, plan, settings, run_id, merge_previous, allow_over_budget=allow_over_budget)


def current_run_id() -> str:
    """The flow run's id (a fresh one outside a flow): receipts, lineage and versions carry it."""
    context = FlowRunContext.get()
    return str(context.flow_run.id) if context and context.flow_run else str(uuid.uuid4())


def run_plan(manifest: Manifest, plan: Plan, settings: HorseSettings, run_id: str, merge_previous: bool,
             notices: list[str] | None = None, allow_over_budget: bool = False) -> RunResult:
    """Render the plan's to-do jobs, record them, publish each campaign's next version and report:
    the part of a run after planning, shared by campaign runs and promotes (`flows.promote`)."""
    context = FlowRunContext.get()
    in_flow = bool(context and context.flow_run)
    store = Store(settings.store_url, settings.storage_options)
    dialogue = dialogue_policy(settings)  # the dialogue gate: the recogniser's identity, per-variant checks
    if dialogue.off_note and any(job.dialogue for job in plan.jobs):
        _logger().warning(dialogue.off_note)  # every run says so: an unchecked line never looks checked
    # Keep the manifest itself: backfills and audits read the exact bytes a version came from.
    manifest_blob = store.put_blob(manifest.data, ext="parquet")
    routes = Routes.from_settings(settings.routing)
    quote, budgets = quote_and_check_budgets(plan, settings, allow_over_budget, routes)
    guard = BudgetGuard(budgets, quote, plan.todo, routes)

    resolved = settings.resolved_model()
    run = RunRecord(
        run_id=run_id,
        job_name=context.flow.name if in_flow and context.flow else "render_campaign",
        model_fingerprint=plan.model_fingerprint,
        lineage_inputs=({"uri": manifest_blob.uri, "version": manifest.sha256},
                        {"uri": resolved.checkpoint_dir or f"model/{resolved.name}", "version": plan.model_fingerprint}),
        campaigns=tuple(manifest.campaign_ids),
    )
    row_errors = [str(e) for e in manifest.errors] + plan.errors
    totals = RunTotals(planned=len(plan.jobs), cached=len(plan.cached), invalid_rows=len(row_errors),
                       kept_approved=len(plan.kept))
    label = "-".join(run.campaigns) or "empty"
    progress = Progress(artifact_key(label, "progress") if in_flow else None, f"Shots finished for {label}")
    progress.start(totals)
    store.lineage.start(run_id=run_id, job_name=run.job_name, job_type="JOB", inputs=list(run.lineage_inputs),
                        tags=run.lineage_tags)
    ledger = RunLedger()
    try:
        try:
            failures = render_and_collect(plan.todo, settings, run, store, totals, progress, guard, ledger)
        except BaseException:  # what was spent was spent, cancelled or not
            record_spend(store, guard, run_id, settings, quiet=True)
            raise
        spend = record_spend(store, guard, run_id, settings)
        progress.update(totals, force=True)
        result = RunResult(run_id, {}, totals, row_errors, failures, notices=list(notices or []), spend=spend,
                           budget_stop=guard.reason)
        if guard.stopped_by:
            _logger().warning("%s: %d shots left for a later run", guard.reason, totals.not_rendered_budget)
        summaries, qc_tables = {}, {}
        qc = delivery_qc(store, plan, ledger)
        heard = store.qc.dialogue_results(job.render_key for job in plan.jobs if job.dialogue)
        for campaign_id, entries in version_entries(plan, ledger.fields, qc, heard).items():
            version = publish(campaign_id, entries, settings, manifest_blob.uri, manifest.sha256, run, merge_previous)
            result.campaigns[campaign_id] = version.number
            if version.contact_sheet_uri:
                result.contact_sheets[campaign_id] = version.contact_sheet_uri
            result.qc_failures += qc_failures(entries)
            summaries[campaign_id] = summary_markdown(campaign_id, version.number, totals, store.url, version.uri,
                                                      row_errors, version.contact_sheet_uri, version.contact_sheet,
                                                      qc_markdown(entries, dialogue.off_note))
            if any("qc" in e or "dialogue" in e for e in entries):
                qc_tables[campaign_id] = qc_table_rows(entries)
        if in_flow:
            report(label, result.failures, summaries, qc_tables)
            create_spend_table(label, spend, budgets, guard.reason)
        store.lineage.complete(run_id=run_id, job_name=run.job_name, job_type="JOB", inputs=list(run.lineage_inputs),
                               outputs=list(ledger.outputs()), tags=run.lineage_tags)
    except BaseException as exc:  # a cancel (SIGTERM) too: the pool has already stopped its actors
        store.lineage.fail(run_id=run_id, job_name=run.job_name, job_type="JOB", inputs=list(run.lineage_inputs),
                           error_message=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        ledger.close()

    attempted = len(plan.todo)  # shots a budget left for later are missing, not failed
    not_delivered = totals.failed + totals.degraded  # a degraded clip is not what was asked for
    failed_fraction = not_delivered / max(attempted, 1)
    if not_delivered and failed_fraction > settings.render.failure_threshold:
        raise RunFailed(
            f"{not_delivered} of {attempted} shots failed or were degraded ({failed_fraction:.0%} > threshold "
            f"{settings.render.failure_threshold:.0%}); version(s) {result.campaigns} published with them marked failed"
        )
    return result
