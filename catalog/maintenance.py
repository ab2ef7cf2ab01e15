"""Catalog maintenance: compact the Delta tables, vacuum what time travel no longer needs, and
collect garbage blobs. Nothing here reads or writes a render; it is safe while renders commit.

- Compaction (delta-rs `optimize.compact`) rewrites each partition's small files into one
  (one partition per campaign in the render index). It commits like any writer: a conflict with
  a concurrent commit is retried on the new version (DeltaRef.write); the rows are the same
  before and after, so a reader sees either layout, never a mix.
- Vacuum deletes data files that no version newer than the retention horizon uses, except the
  files of every index version a campaign version was published at (`keep_versions`): time
  travel keeps working to the horizon and to each of those versions, however old. It is the
  "lite" vacuum: it deletes only files the log removed, never a file a concurrent writer has
  written but not committed yet. A retention shorter than the longest read or commit could
  delete a file a concurrent reader still needs; the default is a week.
- Garbage collection is `Store.gc`: blobs no index row, version or receipt references, older
  than the grace period.

A dry run reports what each step would do and changes nothing.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from deltalake import CommitProperties, DeltaTable

from .delta import DeltaRef, commit_metadata
from .gc import GCReport
from .redact import get_logger

if TYPE_CHECKING:
    from .store import Store

log = get_logger(__name__)

# delta-rs's default target size for compacted files (delta.targetFileSize)
TARGET_FILE_BYTES = 100 * 1024 * 1024


@dataclass
class TableMaintenance:
    table: str
    partition_by: list[str]
    version_before: int | None
    version_after: int | None
    files_before: int         # live data files of the current version
    files_after: int
    stored_before: int        # bytes of every object under the table (old versions and log included)
    stored_after: int
    log_bytes: int
    compacted_files: int      # small files rewritten (or that would be, in a dry run)
    vacuumed_files: int       # data files deleted (or that would be)
    kept_versions: list[int] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class MaintenanceReport:
    dry_run: bool
    retention_hours: int
    tables: list[TableMaintenance]
    gc: GCReport | None = None

    def as_dict(self) -> dict[str, Any]:
        gc = None
        if self.gc is not None:
            gc = {**asdict(self.gc), "deleted": len(self.gc.deleted), "deleted_uris": self.gc.deleted[:100]}
        return {"dry_run": self.dry_run, "retention_hours": self.retention_hours,
                "tables": [asdict(t) for t in self.tables], "gc": gc}


def small_files(files, target_bytes: int = TARGET_FILE_BYTES) -> int:
    """Files compaction would rewrite: those under the target size in partitions that hold more
    than one (delta-rs bins a partition's small files; a lone small file stays)."""
    names = files.column_names
    partition_cols = [n for n in names if n.startswith("partition.")]
    groups: dict[tuple, int] = {}
    sizes = files.column("size_bytes").to_pylist()
    parts = list(zip(*(files.column(n).to_pylist() for n in partition_cols))) if partition_cols else [()] * len(sizes)
    for size, part in zip(sizes, parts):
        if size < target_bytes:
            groups[part] = groups.get(part, 0) + 1
    return sum(n for n in groups.values() if n > 1)


def maintain_table(ref: DeltaRef, *, retention_hours: int, keep_versions: set[int] = frozenset(),
                   dry_run: bool = True, run_id: str | None = None) -> TableMaintenance:
    """Compact, then vacuum one table (a table that does not exist yet is left alone)."""
    started = time.perf_counter()
    version = ref.version()
    before_files, before_stored = ref.files(), ref.stored()
    report = TableMaintenance(
        table=ref.name, partition_by=ref.read(lambda dt: dt.metadata().partition_columns, []),
        version_before=version, version_after=version, files_before=before_files.num_rows,
        files_after=before_files.num_rows, stored_before=before_stored["bytes"], stored_after=before_stored["bytes"],
        log_bytes=before_stored["log_bytes"], compacted_files=small_files(before_files), vacuumed_files=0)
    if version is None:
        return report
    # Only versions this table has: a campaign version may predate a rebuilt index.
    report.kept_versions = sorted(v for v in keep_versions if 0 <= v <= version)

    def props(operation: str) -> CommitProperties:
        return CommitProperties(custom_metadata=commit_metadata(operation, {"run_id": run_id}))

    if not dry_run and report.compacted_files:
        def compact(dt: DeltaTable) -> dict:
            return dt.optimize.compact(target_size=TARGET_FILE_BYTES, commit_properties=props("compact"),
                                       post_commithook_properties=ref.hooks)

        metrics = ref.write(compact)
        report.compacted_files = metrics.get("numFilesRemoved", 0)

    def vacuum(dt: DeltaTable) -> list[str]:
        return dt.vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False,
                         keep_versions=report.kept_versions or None, commit_properties=props("vacuum"),
                         post_commithook_properties=ref.hooks)

    report.vacuumed_files = len(ref.read(vacuum, []) if dry_run else ref.write(vacuum))
    after_stored = ref.stored()
    report.version_after = ref.version()
    report.files_after = ref.files().num_rows
    report.stored_after, report.log_bytes = after_stored["bytes"], after_stored["log_bytes"]
    report.seconds = round(time.perf_counter() - started, 3)
    log.info("maintenance %s %s: %d -> %d files, %d small files %s, %d files %s, %d versions kept",
             ref.name, "dry run" if dry_run else "run", report.files_before, report.files_after,
             report.compacted_files, "to compact" if dry_run else "compacted", report.vacuumed_files,
             "to vacuum" if dry_run else "vacuumed", len(report.kept_versions))
    return report


def maintain(store: "Store", *, retention_hours: int, gc_grace: timedelta | float, dry_run: bool = True,
             run_id: str | None = None) -> MaintenanceReport:
    """Compact and vacuum the render index, the campaign_versions table and the QC index, then GC
    the blobs."""
    if retention_hours < 0:
        raise ValueError(f"retention_hours must be >= 0, got {retention_hours}")
    pinned = store.versions.index_versions()
    tables = [
        maintain_table(store.index.table, retention_hours=retention_hours, keep_versions=pinned, dry_run=dry_run,
                       run_id=run_id),
        maintain_table(store.versions.table, retention_hours=retention_hours, dry_run=dry_run, run_id=run_id),
        maintain_table(store.qc.table, retention_hours=retention_hours, dry_run=dry_run, run_id=run_id),
    ]
    return MaintenanceReport(dry_run, retention_hours, tables, store.gc(grace=gc_grace, dry_run=dry_run))
