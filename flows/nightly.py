"""The two flows the studio runs: `nightly_campaign_render` (a manifest, on a schedule) and
`backfill_variants` (more languages, aspect ratios or takes of a published campaign). Both are
thin: parameters carry URIs and options, never shot lists, and `render_campaign` does the work.
Progress reaches a caller in this process through `flows.progress.progress_listener`."""

from __future__ import annotations

import dataclasses
from typing import Any

from prefect import flow

from catalog import Store
from flows.campaign_run import RunResult, render_campaign
from flows.manifest import ManifestError
from flows.plan import Filters
from flows.review import review_step
from flows.settings import HorseSettings, load_settings, run_budget_overrides


@flow(name="nightly-campaign-render", log_prints=True)
def nightly_campaign_render(
    manifest_uri: str,
    store_url: str | None = None,
    model: str | None = None,
    config_file: str | None = None,
    ray_address: str | None = None,
    force: bool = False,
    preview: bool = False,
    allow_over_budget: bool = False,
    budget_gpu_hours: float | None = None,
    budget_money: float | None = None,
    destinations: list[str] | None = None,
    force_approved: list[str] | None = None,
    review: bool = False,
    promote_to: str = "1080p",
    review_timeout_s: int | None = None,
) -> dict[str, Any]:
    """Render every shot variant of a campaign manifest that the catalog does not have yet, then
    publish the campaign's next version. Parameters carry URIs and options, never shot lists.
    `preview`: every take as a 256p preview whose base latent is kept for `promote-takes` (as if
    every row had the manifest's `preview` column set). `destinations` replaces `render.destinations`
    (for rows without their own). Approved variants are kept as they are, except on the
    `force_approved` shots, which render again (on record as forced). `review`: then pause for
    review in the UI (flows.review; approved previews are promoted to `promote_to`). A quote over a
    budget stops the run before it renders, unless allow_over_budget: then it renders, most
    important first, until the budget is reached (flows.budget)."""
    settings = flow_settings(config_file, store_url, model, ray_address, budget_gpu_hours, budget_money, destinations)
    filters = Filters(preview=True if preview else None, force_approved=tuple(force_approved or ()))
    result = render_campaign(manifest_uri, settings, filters, force=force, allow_over_budget=allow_over_budget).as_dict()
    if review:
        result["review"] = {campaign: review_step(campaign, number, settings, promote_to=promote_to,
                                                  timeout_s=review_timeout_s, run_id=result["run_id"])
                            for campaign, number in result["versions"].items()}
    return result


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
    allow_over_budget: bool = False,
    budget_gpu_hours: float | None = None,
    budget_money: float | None = None,
    destinations: list[str] | None = None,
    force_approved: list[str] | None = None,
) -> dict[str, Any]:
    """Render extra variants (languages, aspect ratios, takes) of a published campaign from the
    manifest its latest version was made from; the new version keeps every earlier variant."""
    settings = flow_settings(config_file, store_url, model, ray_address, budget_gpu_hours, budget_money, destinations)
    filters = dataclasses.replace(backfill_filters(languages, aspect_ratios, takes, shot_ids),
                                  force_approved=tuple(force_approved or ()))
    return run_backfill(campaign_id, settings, filters, force, allow_over_budget).as_dict()


def flow_settings(config_file, store_url, model, ray_address, budget_gpu_hours=None, budget_money=None,
                  destinations=None) -> HorseSettings:
    return load_settings(config_file, store_url=store_url, model=model,
                         ray={"address": ray_address} if ray_address else None,
                         budget=run_budget_overrides(budget_gpu_hours, budget_money),
                         render={"destinations": destinations} if destinations is not None else None)


def backfill_filters(languages, aspect_ratios, takes, shot_ids) -> Filters:
    from model.prompt import normalize_language

    return Filters(
        languages=tuple(normalize_language(code) for code in languages) if languages else None,
        aspect_ratios=tuple(aspect_ratios) if aspect_ratios else None,
        takes=takes,
        shot_ids=tuple(shot_ids) if shot_ids else None,
    )


def run_backfill(campaign_id: str, settings: HorseSettings, filters: Filters, force: bool = False,
                 allow_over_budget: bool = False) -> RunResult:
    store = Store(settings.store_url, settings.storage_options)
    latest = store.versions.latest(campaign_id)
    if latest is None:
        raise ManifestError(f"campaign {campaign_id!r} has no published version to backfill; render its manifest first")
    manifest_uri = store.versions.read(campaign_id, latest)["manifest_uri"]
    return render_campaign(manifest_uri, settings, filters, force=force, merge_previous=True,
                           allow_over_budget=allow_over_budget)

