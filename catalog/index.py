"""The render index: a Delta table (index/renders) with one row per render key.

Commits are batched MERGEs on render_key: new keys are inserted, a row that is not ok (failed,
degraded) is replaced by a later receipt, an ok row never changes; only ok rows count as
rendered. Concurrent committers conflict at the Delta log (put-if-absent of the next log entry,
locally and on S3); the loser reloads and retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, write_deltalake

from .delta import DeltaRef, commit_metadata
from .ids import validate_sha256
from .receipts import FLOAT_FIELDS, INT_FIELDS, STRING_FIELDS, Receipts, normalize_receipt
from .redact import get_logger
from .root import Root

log = get_logger(__name__)

RENDERS_TABLE = "index/renders"
RENDER_SCHEMA = pa.schema(
    [pa.field(n, pa.string()) for n in STRING_FIELDS]
    + [pa.field(n, pa.int64()) for n in INT_FIELDS]
    + [pa.field(n, pa.float64()) for n in FLOAT_FIELDS]
    + [pa.field("created_at", pa.timestamp("us", tz="UTC"))]
)


@dataclass(frozen=True)
class CommitResult:
    rows: int            # receipts in the batch after de-duplication
    inserted: int
    updated: int
    version: int | None  # Delta table version after the commit
    retries: int = 0     # conflicting concurrent commits this call lost and retried


def _dedupe(rows: list[dict]) -> list[dict]:
    """One row per render key: a success beats a failure, then the newest wins."""
    best: dict[str, dict] = {}
    for r in rows:
        prior = best.get(r["render_key"])
        if prior is None or (prior["status"] != "ok"
                             and (r["status"] == "ok" or r["created_at"] >= prior["created_at"])):
            best[r["render_key"]] = r
    return list(best.values())


def _filter(table: pa.Table, render_keys: list[str] | None = None, **equal: str | None) -> pa.Table:
    mask = None
    if render_keys is not None:
        mask = pc.is_in(table["render_key"], value_set=pa.array(render_keys, pa.string()))
    for column, value in equal.items():
        if value is not None:
            m = pc.equal(table[column], value)
            mask = m if mask is None else pc.and_(mask, m)
    return table if mask is None else table.filter(mask)


class RenderIndex:
    def __init__(self, root: Root, receipts: Receipts, check_uri: Callable[[str, str], None] | None = None):
        self.root = root
        self.receipts = receipts
        self.check_uri = check_uri
        self.table = DeltaRef(root, RENDERS_TABLE, RENDER_SCHEMA)

    def commit(self, receipts: Iterable[dict], *, run_id: str | None = None,
               metadata: dict[str, str] | None = None) -> CommitResult:
        """MERGE receipts into the index on render_key (insert new; replace rows that are not ok)."""
        rows = _dedupe([normalize_receipt(r, self.check_uri) for r in receipts])
        if not rows:
            return CommitResult(0, 0, 0, self.table.version())
        source = pa.Table.from_pylist(rows, schema=RENDER_SCHEMA)
        return self._merge(source, run_id, metadata)

    def _merge(self, source: pa.Table, run_id: str | None, metadata: dict[str, str] | None) -> CommitResult:
        """MERGE already validated, de-duplicated rows (RENDER_SCHEMA) into the table."""
        campaigns = sorted(set(source["campaign_id"].to_pylist()))
        props = CommitProperties(custom_metadata=commit_metadata(
            "commit_receipts",
            {"run_id": run_id, "rows": source.num_rows, "campaigns": ",".join(campaigns), **(metadata or {})},
        ))

        def merge(dt: DeltaTable) -> dict:
            return (
                dt.merge(source, "t.render_key = s.render_key", source_alias="s", target_alias="t",
                         commit_properties=props)
                .when_matched_update_all(predicate="t.status <> 'ok'")
                .when_not_matched_insert_all()
                .execute()
            )

        conflicts_before = self.table.conflicts
        stats = self.table.write(merge)
        return CommitResult(source.num_rows, stats.get("num_target_rows_inserted", 0),
                            stats.get("num_target_rows_updated", 0), self.table.version(),
                            self.table.conflicts - conflicts_before)

    def _lookup(self, keys: Iterable[str], status: str | None, columns: list[str] | None) -> pa.Table | None:
        keys = sorted({validate_sha256(k, "render_key") for k in keys})
        if not keys:
            return None
        # Filtered in memory, not pushed down: MERGE writes string_view columns and pyarrow's
        # statistics pruning cannot compare them with the table's string schema.
        wanted = None if columns is None else list(dict.fromkeys([*columns, "render_key", "status"]))
        table = self.table.read_table(wanted)
        return None if table is None else _filter(table, render_keys=keys, status=status)

    def existing(self, keys: Iterable[str], status: str | None = "ok",
                 columns: list[str] | None = None) -> dict[str, dict]:
        """Bulk lookup: {render_key: index row} for the keys that are in the index (by default
        only renders that are ok; status=None returns failed and degraded rows too); rows hold
        only `columns` (and render_key, status) when given."""
        table = self._lookup(keys, status, columns)
        if table is None:
            return {}
        return {row["render_key"]: row for row in table.to_pylist()}

    def existing_keys(self, keys: Iterable[str], status: str | None = "ok") -> set[str]:
        """Like existing() but only the keys (reads one column; the planner's fast path)."""
        table = self._lookup(keys, status, ["render_key"])
        return set() if table is None else set(table.column("render_key").to_pylist())

    def to_arrow(self, campaign_id: str | None = None, status: str | None = None,
                 columns: list[str] | None = None) -> pa.Table:
        """Index rows (only `columns`, when given), of one campaign and/or status."""
        wanted = None if columns is None else list(dict.fromkeys([*columns, "campaign_id", "status"]))
        table = self.table.read_table(wanted)
        if table is None:
            table = RENDER_SCHEMA.empty_table() if wanted is None else RENDER_SCHEMA.empty_table().select(wanted)
        return _filter(table, campaign_id=campaign_id, status=status)

    def referenced_uris(self) -> set[str]:
        """Every blob URI an index row names (for GC)."""
        table = self.table.read_table(["blob_uri", "poster_uri"])
        return set() if table is None else {u for col in table.columns for u in col.to_pylist() if u}

    def rebuild_from_receipts(self, *, run_id: str | None = None) -> int:
        """Replace the index content with what the receipts say (a new Delta version; older
        versions stay readable by time travel until vacuumed). Returns the row count."""
        rows = self.receipts.read_all()
        table = pa.Table.from_pylist([normalize_receipt(r) for r in rows], schema=RENDER_SCHEMA)
        props = CommitProperties(custom_metadata=commit_metadata("rebuild_from_receipts", {"run_id": run_id, "rows": len(rows)}))

        def overwrite(dt: DeltaTable) -> None:
            write_deltalake(dt, table, mode="overwrite", commit_properties=props)

        self.table.write(overwrite)
        return table.num_rows

    def version(self) -> int | None:
        return self.table.version()

    def history(self, limit: int | None = None) -> list[dict]:
        return self.table.history(limit)

    def optimize(self, vacuum_retention_hours: int | None = None) -> dict:
        """Compact small files; optionally vacuum files older than the retention."""
        def maintain(dt: DeltaTable) -> dict:
            out = {"compact": dt.optimize.compact()}
            if vacuum_retention_hours is not None:
                out["vacuum"] = dt.vacuum(retention_hours=vacuum_retention_hours, dry_run=False,
                                          enforce_retention_duration=False)
            return out

        return self.table.read(maintain, {})  # no table yet: nothing to compact
