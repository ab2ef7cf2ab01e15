"""A dry run of a manifest: its render jobs with their backends, which the catalog already has,
and a quote for the rest (GPU time for local renders, clips and money per API provider). Nothing is rendered or written; `horse plan` prints this document."""

from __future__ import annotations

from typing import Any

from catalog import Store
from flows.destinations import run_destinations
from flows.dialogue import dialogue_policy
from flows.manifest import read_manifest
from flows.plan import make_plan, model_info, quote_gpu_seconds
from flows.routing import Routes, api_quote, plan_row
from flows.settings import HorseSettings


def dry_run(manifest_uri: str, settings: HorseSettings) -> dict[str, Any]:
    """Raises ManifestError when the manifest as a whole cannot be read."""
    destinations = run_destinations(settings)
    store = Store(settings.store_url, settings.storage_options)
    manifest = read_manifest(manifest_uri, settings.storage_options or None, settings.render.input_roots,
                             destinations.known, settings.routing.backends, store.adapters.names())
    dialogue = dialogue_policy(settings)
    routes = Routes.from_settings(settings.routing)
    plan = make_plan(manifest.shots, model_info(settings), store, destinations=destinations, routes=routes,
                     dialogue=dialogue, default_adapter=settings.render.adapter,
                     default_adapter_strength=settings.render.adapter_strength)
    gpu_seconds, basis = quote_gpu_seconds(plan, store, settings.render.gpu_seconds_per_clip_second)
    jobs = [{**job.entry(), "resolution": job.resolution, "seconds": job.seconds, "width": job.width,
             "height": job.height, "destinations": [d.name for d in job.destinations],
             "adapter": job.adapter.record() if job.adapter else None,
             "cached": job.render_key in plan.cached, **plan_row(job)} for job in plan.jobs]
    row_errors = [str(e) for e in manifest.errors] + plan.errors
    return {
        "ok": not row_errors,
        "jobs": len(plan.jobs), "cached": len(plan.cached), "to_render": len(plan.todo),
        "gpu_seconds_quote": round(gpu_seconds, 1), "quote_basis": basis,
        "api_quote": api_quote(plan, routes),  # per provider: clips to render, tokens, USD
        "row_errors": row_errors, "plan": jobs,
        "dialogue_gate": dialogue.off_note or f"on ({dialogue.speech.backend})",
        "kept_approved": [{"campaign_id": e["campaign_id"], "shot_id": e["shot_id"], "variant": e["variant"],
                           "render_key": e["render_key"], "approved_by": e["approval"]["who"]} for e in plan.kept],
    }
