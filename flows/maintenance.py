"""Catalog maintenance as a flow: compact the Delta tables, vacuum what time travel no longer needs
(keeping the index version of every campaign version), then garbage-collect unreferenced blobs.

Scheduled by the maintenance deployment (`maintenance.cron` in `schedule.timezone`) and run now by
`horse maintain`. Safe while a render commits (catalog/maintenance.py says why); a dry run says
what each step would do and changes nothing.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError

from catalog import Store
from catalog.maintenance import MaintenanceReport, maintain_table
from flows.settings import HorseSettings, load_settings


def _logger():
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("horse")


@task(name="maintain-render-index", cache_policy=NO_CACHE)
def maintain_index(settings: HorseSettings, dry_run: bool, run_id: str):
    store = Store(settings.store_url, settings.storage_options)
    return maintain_table(store.index.table, retention_hours=settings.maintenance.vacuum_retention_hours,
                          keep_versions=store.versions.index_versions(), dry_run=dry_run, run_id=run_id)


@task(name="maintain-campaign-versions", cache_policy=NO_CACHE)
def maintain_versions(settings: HorseSettings, dry_run: bool, run_id: str):
    store = Store(settings.store_url, settings.storage_options)
    return maintain_table(store.versions.table, retention_hours=settings.maintenance.vacuum_retention_hours,
                          dry_run=dry_run, run_id=run_id)


@task(name="collect-garbage", cache_policy=NO_CACHE)
def collect_garbage(settings: HorseSettings, dry_run: bool):
    store = Store(settings.store_url, settings.storage_options)
    return store.gc(grace=timedelta(hours=settings.maintenance.gc_grace_hours), dry_run=dry_run)


def run_maintenance(settings: HorseSettings, dry_run: bool = False) -> MaintenanceReport:
    """The flow's steps, in order; call it inside a flow run (or alone, from a script)."""
    context = FlowRunContext.get()
    run_id = str(context.flow_run.id) if context and context.flow_run else str(uuid.uuid4())
    tables = [maintain_index(settings, dry_run, run_id), maintain_versions(settings, dry_run, run_id)]
    report = MaintenanceReport(dry_run, settings.maintenance.vacuum_retention_hours, tables,
                               collect_garbage(settings, dry_run))
    log = _logger()
    for line in summary_lines(report):
        log.info(line)
    if context and context.flow_run:
        create_markdown_artifact(key="catalog-maintenance", markdown="\n".join(f"- {line}" for line in summary_lines(report)),
                                 description="what catalog maintenance did (or, in a dry run, would do)")
    return report


def summary_lines(report: MaintenanceReport) -> list[str]:
    would = "would be " if report.dry_run else ""
    lines = [f"{t.table}: {t.files_before} -> {t.files_after} data files, {t.compacted_files} small files {would}compacted, "
             f"{t.vacuumed_files} files {would}vacuumed (retention {report.retention_hours} h, "
             f"{len(t.kept_versions)} index versions kept for campaign versions), "
             f"{t.stored_before / 1e6:.1f} -> {t.stored_after / 1e6:.1f} MB stored" for t in report.tables]
    gc = report.gc
    lines.append(f"blobs: {gc.scanned} scanned, {gc.referenced} referenced, {gc.young} within the grace period, "
                 f"{len(gc.deleted)} {would}deleted ({gc.bytes / 1e6:.1f} MB)")
    return lines


@flow(name="catalog-maintenance", log_prints=True)
def catalog_maintenance(store_url: str | None = None, config_file: str | None = None,
                        dry_run: bool = False) -> dict[str, Any]:
    """Compact the catalog's Delta tables, vacuum them within the retention and collect garbage
    blobs; a dry run only reports."""
    settings = load_settings(config_file, store_url=store_url)
    return run_maintenance(settings, dry_run).as_dict()
