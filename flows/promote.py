"""Promote: finish chosen preview takes at 540p or 1080p from their stored base latents.

A preview run (the manifest's `preview` column, or `horse render --preview`) publishes 256p takes
as `<variant>-preview` entries and keeps each take's base latent in the catalog
(`catalog.stage_results`). A promote plans the chosen takes again from the manifest their version
was made from, at the target tier: the same jobs, seeds and render keys a straight render of that
tier has. The actors find the stored base latent under its stage key and start there
(`horse_actors.staged`), so only the SR stage and the decode run, and the clip is bit-identical
to a straight render on the same device. A take whose latent is gone (past
`gc.preview_latent_days`, or made with another model) has its base stage rendered again, and the
run, its log, receipt and version entry say so. The new version lists each promoted clip beside
its preview, with lineage from one to the other.

Stage keys hash the reference image/audio as decoded arrays (what the model consumed), not their
files: the flow computes them from the same `RenderRequest` it sends to the actors, with the same
torch-free function and the model's stage fingerprints, so flow and actor agree by construction.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from prefect import flow

from catalog import Store
from catalog.ids import validate_id
from catalog.stage_results import EXT as STAGE_EXT
from flows.campaign_run import RunResult, _logger, current_run_id, plan_variants, read_manifest_rows, run_plan
from flows.destinations import run_destinations
from flows.dialogue import dialogue_policy
from flows.nightly import flow_settings
from flows.plan import PREVIEW, PROMOTED, Filters, ModelInfo, Plan, PlannedJob, model_info
from flows.render_stream import to_render_job
from flows.review import carry_approvals
from flows.settings import HorseSettings
from horse_actors.staged import stage_key

PROMOTE_TIERS = ("540p", "1080p")
PREVIEW_SUFFIX = "-" + PREVIEW


class PromoteError(ValueError):
    """Nothing to promote as asked: no such campaign version, preview take or target tier."""


@flow(name="promote-takes", log_prints=True)
def promote_takes(
    campaign_id: str,
    to: str,
    shot_ids: list[str] | None = None,
    variants: list[str] | None = None,
    store_url: str | None = None,
    model: str | None = None,
    config_file: str | None = None,
    ray_address: str | None = None,
    destinations: list[str] | None = None,
) -> dict[str, Any]:
    """Finish the chosen preview takes of a campaign's latest version at `to` (540p or 1080p) from
    their stored base latents; the new version lists each promoted clip beside its preview.
    `variants` are preview variant ids, with or without the `-preview` suffix; `destinations`
    replaces `render.destinations` (promoted clips get delivery QC like any other render)."""
    settings = flow_settings(config_file, store_url, model, ray_address, destinations=destinations)
    return run_promote(campaign_id, to, settings, shot_ids, variants)


def run_promote(campaign_id: str, to: str, settings: HorseSettings, shot_ids: list[str] | None = None,
                variants: list[str] | None = None) -> dict[str, Any]:
    if to not in PROMOTE_TIERS:
        raise PromoteError(f"to: promote to one of {', '.join(PROMOTE_TIERS)}, got {to!r}")
    store = Store(settings.store_url, settings.storage_options)
    latest = store.versions.latest(campaign_id)
    if latest is None:
        raise PromoteError(f"campaign {campaign_id!r} has no published version in {store.url}")
    version = store.versions.read(campaign_id, latest)
    previews = chosen_previews(version["entries"], shot_ids, variants)
    if not previews:
        asked = f" matching shots {shot_ids or 'any'} and variants {variants or 'any'}" if shot_ids or variants else ""
        raise PromoteError(f"campaign {campaign_id!r} version {latest} has no rendered preview takes{asked}; "
                           "render previews first (horse render MANIFEST --preview)")
    run_id = current_run_id()
    destinations = run_destinations(settings)
    manifest = read_manifest_rows(version["manifest_uri"], settings, destinations)
    filters = Filters(resolution=to, preview=False, shot_ids=tuple(sorted({shot for shot, _ in previews})))
    planned = plan_variants(manifest, settings, filters, False, run_id, destinations, dialogue_policy(settings))
    jobs = [dataclasses.replace(job, role=PROMOTED, kind="promote", promoted_from=previews[(job.shot_id, job.variant)])
            for job in planned.jobs if job.campaign_id == campaign_id and (job.shot_id, job.variant) in previews]
    lost = sorted(set(previews) - {(job.shot_id, job.variant) for job in jobs})
    if lost:  # the manifest no longer plans them (e.g. a shot row was removed)
        raise PromoteError(f"the manifest of version {latest} no longer has take(s) "
                           f"{', '.join(f'{s}/{v}' for s, v in lost)}")
    keys = {job.render_key for job in jobs}
    plan = Plan(jobs, {k: row for k, row in planned.cached.items() if k in keys}, planned.model_fingerprint)
    notices = [latent_gone(job, key) for job, key in missing_latents(plan.todo, store, model_info(settings))]
    for notice in notices:
        _logger().warning(notice)
    result = run_plan(manifest, plan, settings, run_id, merge_previous=True, notices=notices)
    number = result.campaigns[campaign_id]
    carry_approvals(store, campaign_id, number, run_id)  # an approved preview's finished clip is approved too
    return {**result.as_dict(), "promoted": promoted_entries(store, campaign_id, number, set(previews))}


def chosen_previews(entries: list[dict], shot_ids: list[str] | None,
                    variants: list[str] | None) -> dict[tuple[str, str], dict[str, Any]]:
    """{(shot_id, variant it is promoted to): what the promoted clip names as its preview} for the
    version's rendered preview entries that the filters choose."""
    shots = {validate_id(s, "shot_ids") for s in shot_ids or ()}
    wanted = {validate_id(v, "variants").removesuffix(PREVIEW_SUFFIX) for v in variants or ()}
    chosen = {}
    for e in entries:
        if e.get("role") != PREVIEW or e.get("status") != "ok":
            continue
        target = e["variant"].removesuffix(PREVIEW_SUFFIX)
        if (shots and e["shot_id"] not in shots) or (wanted and target not in wanted):
            continue
        chosen[(e["shot_id"], target)] = {"render_key": e["render_key"], "variant": e["variant"],
                                          "blob_uri": e["blob_uri"], "sha256": e["sha256"],
                                          "stage_key": e.get("stage_key")}
    return chosen


def missing_latents(jobs: list[PlannedJob], store: Store, model: ModelInfo) -> list[tuple[PlannedJob, str]]:
    """(job, base stage key) of the jobs whose base latent the catalog does not have (no record,
    or its blob is gone): one read of the stage records; a read that fails raises."""
    keys = {job.render_key: stage_key(to_render_job(job, model.fingerprint).request, "base", model.stage_fingerprints)
            for job in jobs}
    found = store.stage_results.existing(keys.values())
    present = {k for k, record in found.items() if store.blob_exists(record.sha256, STAGE_EXT)}
    return [(job, keys[job.render_key]) for job in jobs if keys[job.render_key] not in present]


def latent_gone(job: PlannedJob, key: str) -> str:
    preview = (job.promoted_from or {}).get("variant", "its preview")
    return (f"{job.campaign_id}/{job.shot_id} {job.variant}: the base latent of {preview} is gone (stage result "
            f"{key[:12]} is not in the store: past gc.preview_latent_days, or made with another model); "
            "rendering its base stage again")


def promoted_entries(store: Store, campaign_id: str, number: int,
                     takes: set[tuple[str, str]]) -> list[dict[str, Any]]:
    """The entries of version `number` for the promoted `takes`: what was promoted from what."""
    entries = store.versions.read(campaign_id, number)["entries"]
    return [{"shot_id": e["shot_id"], "variant": e["variant"], "status": e["status"],
             "resolution": e.get("resolution"), "blob_uri": e.get("blob_uri"),
             "from_variant": (e.get("promoted_from") or {}).get("variant"),
             "base_rerendered": e.get("base_rerendered")}
            for e in entries if e.get("role") == PROMOTED and (e["shot_id"], e["variant"]) in takes]
