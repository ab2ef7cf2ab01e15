"""Garbage collection of blobs nothing refers to.

A blob is deleted only if no index row, no campaign version manifest, no stage result record
still within its retention (`catalog.stage_results`) and (by default) no receipt mentions it,
and it is older than the grace period. The grace period protects renders in flight: their blobs
are stored before any receipt, index row or version points at them. Only keys under blobs/ are
ever deleted; nothing here is built from manifest values. The report counts files and bytes by
kind (clips, posters, contact sheets, stage results, manifests, masters).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable

from .blobs import BLOB_PREFIX
from .redact import get_logger
from .root import Root

log = get_logger(__name__)


@dataclass
class GCReport:
    dry_run: bool
    scanned: int = 0
    referenced: int = 0
    young: int = 0
    deleted: list[str] = field(default_factory=list)  # URIs deleted (or that would be, in a dry run)
    bytes: int = 0                                     # bytes freed (or that would be)
    # kind -> {"files", "bytes"} in the store before this pass, {"deleted_files", "deleted_bytes"} of them
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    expired_stage_results: list[str] = field(default_factory=list)  # stage keys past their retention

    def count(self, kind: str, size: int, deleted: bool) -> None:
        row = self.by_kind.setdefault(kind, {"files": 0, "bytes": 0, "deleted_files": 0, "deleted_bytes": 0})
        row["files"] += 1
        row["bytes"] += size
        if deleted:
            row["deleted_files"] += 1
            row["deleted_bytes"] += size


# Blob kinds by extension; posters and contact sheets are both JPEGs, told apart by who names them.
_KIND_BY_EXT = {"mp4": "clips", "mov": "masters", "jpg": "posters", "safetensors": "stage results", "parquet": "manifests"}


def blob_kind(key: str, named_as: str | None = None) -> str:
    """What a blob is, from the field that names it (`named_as`, e.g. "contact_sheet_uri", or a
    master's field) when known, else from its extension."""
    named_as = (named_as or "").lower()
    for hint, kind in (("master", "masters"), ("contact_sheet", "contact sheets"), ("poster", "posters"),
                       ("manifest", "manifests"), ("stage", "stage results")):
        if hint in named_as:
            return kind
    return _KIND_BY_EXT.get(key.rsplit(".", 1)[-1], "other")


def _modified(info: dict) -> datetime | None:
    for name in ("LastModified", "mtime", "created", "updated", "last_modified"):
        value = info.get(name)
        if value is None:
            continue
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value, timezone.utc)
        if isinstance(value, str):
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return None


def collect_garbage(root: Root, references: Iterable[Callable[[], Iterable[str]]],
                    grace: timedelta | float = timedelta(days=7), dry_run: bool = True,
                    now: datetime | None = None, named_as: dict[str, str] | None = None) -> GCReport:
    """Delete (or, in a dry run, list) the blobs under `root` that none of the URIs returned by
    the `references` callables names. Every source must read everything it covers or raise:
    an exception from any of them ends GC before anything is deleted. `named_as` maps blob URIs
    to the field that names them, for the report's kinds."""
    if not isinstance(grace, timedelta):
        grace = timedelta(seconds=float(grace))
    now = now or datetime.now(timezone.utc)
    blobs = root.list_files(BLOB_PREFIX, detail=True)  # before references: anything stored later is young
    keep: set[str] = set()
    for source in references:
        keep.update(k for k in map(root.key_of, source()) if k)
    kinds = {root.key_of(uri): field for uri, field in (named_as or {}).items()}
    report = GCReport(dry_run=dry_run, scanned=len(blobs))
    for key, info in sorted(blobs.items()):
        if not key.startswith(BLOB_PREFIX + "/"):
            continue
        size = int(info.get("size") or 0)
        kind = blob_kind(key, kinds.get(key)) if "/.tmp-" not in key else "other"
        if key in keep:
            report.referenced += 1
            report.count(kind, size, deleted=False)
            continue
        modified = _modified(info)
        if modified is None or now - modified < grace:
            report.young += 1
            report.count(kind, size, deleted=False)
            continue
        report.deleted.append(root.uri(key))
        report.bytes += size
        report.count(kind, size, deleted=True)
        if not dry_run:
            root.delete(key)
    log.info("gc %s: %d blobs scanned, %d referenced, %d young, %d %s (%d bytes)",
             "dry run" if dry_run else "run", report.scanned, report.referenced, report.young,
             len(report.deleted), "would be deleted" if dry_run else "deleted", report.bytes)
    return report
