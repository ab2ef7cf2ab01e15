"""A dry run of a manifest: its render jobs with their backends, which the catalog already has, a
quote per stage for the local rest (API clips: clips and money per provider), how long the
cluster needs for it and the budgets it is held to. Nothing is rendered or written, and neither
torch nor (unless a Ray cluster is configured) Ray is imported: `horse plan` prints this
document. Its fields are listed in the README ("Cost, budgets and priorities")."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from catalog import Store
from flows.budget import api_usd_by_campaign, budget_campaigns, budgets_for, over_budget
from flows.cost import cost_model, quote_plan, render_slots, time_to_finish
from flows.destinations import run_destinations
from flows.dialogue import dialogue_policy
from flows.manifest import gc_paused, read_manifest
from flows.plan import make_plan, model_info
from flows.routing import Routes, api_quote, plan_row
from flows.settings import ConfigError, HorseSettings


def dry_run(manifest_uri: str, settings: HorseSettings, *, gpus: float | None = None, by: str | None = None,
            device_type: str | None = None, rows: int | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The plan document; `rows` limits the job list (None: every job). Raises ManifestError when
    the manifest as a whole cannot be read, ConfigError for unusable options."""
    with gc_paused():  # hundreds of thousands of jobs: a full collection would walk them all, often
        return _dry_run(manifest_uri, settings, gpus, by, device_type, rows, now)


def _dry_run(manifest_uri, settings, gpus, by, device_type, rows, now) -> dict[str, Any]:
    destinations = run_destinations(settings)
    store = Store(settings.store_url, settings.storage_options)
    manifest = read_manifest(manifest_uri, settings.storage_options or None, settings.render.input_roots,
                             destinations.known, settings.routing.backends, store.adapters.names())
    dialogue = dialogue_policy(settings)
    routes = Routes.from_settings(settings.routing)
    plan = make_plan(_drained(manifest.shots), model_info(settings), store, destinations=destinations, routes=routes,
                     dialogue=dialogue, default_adapter=settings.render.adapter,
                     default_adapter_strength=settings.render.adapter_strength, cached_columns=["render_key"])
    row_errors = [str(e) for e in manifest.errors] + plan.errors
    quote = quote_plan(plan, cost_model(store, settings, plan.model_fingerprint, device_type))
    todo = plan.todo
    api_todo = [job for job in todo if job.backend != "local"]  # what the budget checks and API quote look at
    campaigns, api_only = budget_campaigns(quote, api_todo)
    budgets = budgets_for(settings, campaigns, quote.model.device_type, store.spend.by_campaign(), api_only)
    try:  # API clips' quoted USD count toward money budgets, as when the run dispatches them
        api_usd, api_refusal = api_usd_by_campaign(budgets, api_todo, routes), []
    except ConfigError as exc:  # `horse render` refuses to start with it: the plan says why
        api_usd, api_refusal = {}, [str(exc)]
    slots, source = render_slots(settings, gpus)

    def row(job) -> dict[str, Any]:
        return {**job.entry(), "resolution": job.resolution, "seconds": job.seconds, "width": job.width,
                "height": job.height, "destinations": [d.name for d in job.destinations], "priority": job.priority,
                "hero": job.hero, "kind": job.kind, "adapter": job.adapter.record() if job.adapter else None,
                "cached": job.render_key in plan.cached, "gpu_seconds": _rounded(quote.job_seconds.get(job.render_key)),
                **plan_row(job)}

    jobs = JobRows(plan.jobs if rows is None else plan.jobs[:rows], row)
    return {
        "ok": not row_errors,
        "jobs": len(plan.jobs), "cached": len(plan.cached), "to_render": len(todo),
        "gpu_seconds_quote": round(quote.gpu_seconds, 1), "quote_basis": quote.basis,
        "quote": quote.as_dict(),
        "time_to_finish": time_to_finish(quote, slots, source, settings.schedule.timezone, by,
                                         now or datetime.now(timezone.utc)),
        "budgets": [budget.as_dict(quote.gpu_seconds if budget.campaign_id is None
                                   else quote.by_campaign.get(budget.campaign_id, 0.0), api_usd) for budget in budgets],
        "warnings": api_refusal + over_budget(budgets, quote, api_usd),
        "api_quote": api_quote(plan, routes, api_todo),  # per provider: clips to render, tokens, USD
        "row_errors": row_errors, "plan": jobs,
        "dialogue_gate": dialogue.off_note or f"on ({dialogue.speech.backend})",
        "kept_approved": [{"campaign_id": e["campaign_id"], "shot_id": e["shot_id"], "variant": e["variant"],
                           "render_key": e["render_key"], "approved_by": e["approval"]["who"]} for e in plan.kept],
    }


class JobRows(Sequence):
    """The plan's job rows, each made when it is read: every job of a 100k-row manifest (400k)
    as dicts at once would hold more memory than the plan itself (`horse plan --json` writes them
    one by one: flows.cli.command.write_json)."""

    def __init__(self, jobs: list, row: Callable[[Any], dict[str, Any]]) -> None:
        self._jobs, self._row = jobs, row

    def __len__(self) -> int:
        return len(self._jobs)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._row(job) for job in self._jobs[index]]
        return self._row(self._jobs[index])


def _drained(shots: list) -> Iterator:
    """Each shot, dropped from the list as it is planned: 100k validated rows hold 300+ MB, which
    the jobs planned from them can then reuse."""
    shots.reverse()
    while shots:
        yield shots.pop()


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
