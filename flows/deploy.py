"""Deployments: the nightly render on a cron schedule, the backfill on demand, and catalog
maintenance on its own cron schedule.

The render deployments carry a concurrency limit (default 1, later runs wait in line) so two runs
never fight over the same GPUs, and `horse serve` keeps the schedules active when it stops
(`pause_on_shutdown=False`): a restart of the serving process must not silently pause the nights.
"""

from __future__ import annotations

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.client.schemas.schedules import CronSchedule

from flows.maintenance import catalog_maintenance
from flows.nightly import backfill_variants, nightly_campaign_render
from flows.settings import HorseSettings

NIGHTLY, BACKFILL, MAINTENANCE = "nightly", "backfill", "maintenance"


def _limit(settings: HorseSettings) -> ConcurrencyLimitConfig:
    return ConcurrencyLimitConfig(limit=settings.prefect.concurrency_limit, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def _options(settings: HorseSettings) -> dict:
    """Settings that differ from the defaults travel as flow parameters, so the served run uses
    the same store and model as the command that registered it (never credentials)."""
    return {"store_url": settings.store_url, "model": settings.model, "ray_address": settings.ray.address}


def build_deployments(settings: HorseSettings, config_file: str | None = None) -> list:
    common = {**_options(settings), "config_file": config_file}
    nightly_parameters = {**common, "manifest_uri": settings.schedule.manifest_uri}
    schedules = []
    if settings.schedule.manifest_uri:
        schedules = [CronSchedule(cron=settings.schedule.cron, timezone=settings.schedule.timezone)]
    nightly = nightly_campaign_render.to_deployment(
        name=NIGHTLY,
        schedules=schedules,
        parameters={k: v for k, v in nightly_parameters.items() if v is not None},
        concurrency_limit=_limit(settings),
        description="Render every missing variant of the nightly manifest and publish the campaign version.",
        tags=["horse", "nightly"],
    )
    backfill = backfill_variants.to_deployment(
        name=BACKFILL,
        parameters={k: v for k, v in common.items() if v is not None},
        concurrency_limit=_limit(settings),
        description="Render extra languages, aspect ratios or takes of a published campaign.",
        tags=["horse", "backfill"],
    )
    return [nightly, backfill]


def build_maintenance_deployment(settings: HorseSettings, config_file: str | None = None):
    """Catalog maintenance on `maintenance.cron`; one run at a time (it needs no GPU, and is safe
    next to a render run)."""
    parameters = {"store_url": settings.store_url, "config_file": config_file}
    return catalog_maintenance.to_deployment(
        name=MAINTENANCE,
        schedules=[CronSchedule(cron=settings.maintenance.cron, timezone=settings.schedule.timezone)],
        parameters={k: v for k, v in parameters.items() if v is not None},
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        description="Compact and vacuum the catalog's Delta tables within the retention, then collect garbage blobs.",
        tags=["horse", "maintenance"],
    )


def serve_deployments(settings: HorseSettings, config_file: str | None = None) -> None:
    from prefect import serve

    serve(*build_deployments(settings, config_file), build_maintenance_deployment(settings, config_file),
          pause_on_shutdown=False, limit=settings.prefect.concurrency_limit)


def ensure_work_pool(settings: HorseSettings) -> bool:
    """Create the configured work pool (type `process`, one run at a time) unless it exists.
    True if this call created it."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    pool = WorkPoolCreate(name=settings.prefect.work_pool, type="process",
                          concurrency_limit=settings.prefect.concurrency_limit,
                          description="Horse render runs: each flow run is a Ray driver on the GPU cluster")
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(pool)
        except ObjectAlreadyExists:
            return False
    return True
