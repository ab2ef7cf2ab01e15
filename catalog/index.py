"""The render index: a Delta table (index/renders) with one row per campaign and render key.

Commits are batched MERGEs on (campaign_id, render_key): new keys are inserted, a row that is not
ok (failed, degraded) is replaced by a later receipt, an ok row never changes; only ok rows count
as rendered. A key has at most one ok row: receipts are first-wins and every commit carries the
canonical receipt, whose campaign is the one that rendered it first. Concurrent committers
conflict at the Delta log (put-if-absent of the next log entry, locally and on S3); the loser
reloads and retries.

Layout (chosen by measurement, benchmarks/scale.py): the table is partitioned by campaign_id.
A commit's MERGE then scans only its campaigns' files (at 10M rows an unpartitioned MERGE reads
every render_key: seconds per commit), and a plan's lookup reads only its campaigns' files.
The log is kept whole, because campaign versions time-travel to the index version they were
published at (catalog/maintenance.py vacuums data files and keeps those versions' files).
A table made by an older Horse (unpartitioned) keeps working: its files are pruned by their
campaign_id statistics instead; rebuild_from_receipts rewrites it in the current layout.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, write_deltalake

from .delta import DeltaRef, commit_metadata
from .ids import SHA256_PATTERN, validate_id, validate_sha256
from .receipts import FLOAT_FIELDS, INT_FIELDS, STRING_FIELDS, Receipts, normalize_receipt
from .redact import get_logger
from .root import Root

log = get_logger(__name__)

RENDERS_TABLE = "index/renders"
PARTITION_BY = ["campaign_id"]
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


def _render_keys(keys: Iterable[str]) -> pa.Array:
    """The distinct render keys, each a sha256 hex digest, as an Arrow array. A plan asks for
    hundreds of thousands: they are checked in one vectorised pass, and only when one fails are
    they checked one by one, so the error names the first bad key as validate_sha256 does."""
    keys = keys if isinstance(keys, list) else list(keys)
    try:
        array = pa.array(keys, pa.string())
        if not array.null_count and pc.all(pc.match_substring_regex(array, SHA256_PATTERN)).as_py() is not False:
            return pc.unique(array)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # not all strings: the loop names the first
        pass
    for key in keys:
        validate_sha256(key, "render_key")
    raise AssertionError("a key Arrow refused passed validate_sha256")  # the two patterns agree


def _filter(table: pa.Table, render_keys: list[str] | pa.Array | None = None, campaigns: list[str] | None = None,
            **equal: str | None) -> pa.Table:
    mask = None
    for column, values in (("render_key", render_keys), ("campaign_id", campaigns)):
        if values is not None:
            value_set = values if isinstance(values, pa.Array) else pa.array(values, pa.string())
            m = pc.is_in(table[column], value_set=value_set)
            mask = m if mask is None else pc.and_(mask, m)
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
        # keep_log: campaign versions time-travel to the index version they were published at.
        self.table = DeltaRef(root, RENDERS_TABLE, RENDER_SCHEMA, partition_by=PARTITION_BY, keep_log=True)

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
            # The campaign in the predicate lets delta-rs prune the target to the source's
            # campaigns (partition values, or file statistics on an unpartitioned table); that
            # pruning needs the source collected first (streamed_exec=False), which is small.
            return (
                dt.merge(source, "t.campaign_id = s.campaign_id AND t.render_key = s.render_key",
                         source_alias="s", target_alias="t", streamed_exec=False, commit_properties=props,
                         post_commithook_properties=self.table.hooks)
                .when_matched_update_all(predicate="t.status <> 'ok'")
                .when_not_matched_insert_all()
                .execute()
            )

        conflicts_before = self.table.conflicts
        stats = self.table.write(merge)
        return CommitResult(source.num_rows, stats.get("num_target_rows_inserted", 0),
                            stats.get("num_target_rows_updated", 0), self.table.version(),
                            self.table.conflicts - conflicts_before)

    def _lookup(self, keys: Iterable[str], status: str | None, columns: list[str] | None,
                campaigns: Iterable[str] | None) -> pa.Table | None:
        keys = _render_keys(keys)
        where = None
        if campaigns is not None:
            campaigns = sorted({validate_id(c, "campaign_id") for c in campaigns})
            where = [("campaign_id", "in", campaigns)]
        if not len(keys) or campaigns == []:
            return None
        wanted = None if columns is None else list(dict.fromkeys([*columns, "render_key", "campaign_id", "status", "created_at"]))
        table = self.table.read_table(wanted, where)
        if table is None:
            return None
        table = _filter(table, render_keys=keys, campaigns=campaigns, status=status)
        if status is None and table.num_rows:  # a key may have a failed row in one campaign, ok in another
            table = pa.Table.from_pylist(_dedupe(table.to_pylist()), schema=table.schema)
        return table

    def existing(self, keys: Iterable[str], status: str | None = "ok",
                 columns: list[str] | None = None, campaigns: Iterable[str] | None = None) -> dict[str, dict]:
        """Bulk lookup: {render_key: index row} for the keys that are in the index (by default
        only renders that are ok; status=None returns failed and degraded rows too); rows hold
        only `columns` (and render_key, campaign_id, status) when given.

        `campaigns` limits the lookup to those campaigns' rows: it reads only their files, so
        its cost does not grow with the rest of the index. Without it every file is read."""
        table = self._lookup(keys, status, columns, campaigns)
        if table is None:
            return {}
        if columns is not None:  # created_at was read to pick among a key's rows; as datetimes it costs seconds
            table = table.select(list(dict.fromkeys([*columns, "render_key", "campaign_id", "status"])))
        # Column by column: Table.to_pylist builds each row by index lookups, seconds for a plan's 100k+ rows.
        names = table.column_names
        return {row["render_key"]: row for row in map(dict, map(functools.partial(zip, names),
                                                                 zip(*(c.to_pylist() for c in table.columns))))}

    def existing_keys(self, keys: Iterable[str], status: str | None = "ok",
                      campaigns: Iterable[str] | None = None) -> set[str]:
        """Like existing() but only the keys (reads few columns; the planner's fast path)."""
        table = self._lookup(keys, status, ["render_key"], campaigns)
        return set() if table is None else set(table.column("render_key").to_pylist())

    def to_arrow(self, campaign_id: str | None = None, status: str | None = None,
                 columns: list[str] | None = None) -> pa.Table:
        """Index rows (only `columns`, when given), of one campaign and/or status."""
        wanted = None if columns is None else list(dict.fromkeys([*columns, "campaign_id", "status"]))
        where = None if campaign_id is None else [("campaign_id", "=", validate_id(campaign_id, "campaign_id"))]
        table = self.table.read_table(wanted, files_where=where)
        if table is None:
            table = RENDER_SCHEMA.empty_table() if wanted is None else RENDER_SCHEMA.empty_table().select(wanted)
        return _filter(table, campaign_id=campaign_id, status=status)

    def referenced_uris(self) -> set[str]:
        """Every blob URI an index row names (for GC)."""
        table = self.table.read_table(["blob_uri", "poster_uri"])
        return set() if table is None else {u for col in table.columns for u in col.to_pylist() if u}

    def rebuild_from_receipts(self, *, run_id: str | None = None) -> int:
        """Replace the index content with what the receipts say, in the current layout (a new
        Delta version; older versions stay readable by time travel until vacuumed). Run it while
        nothing commits: a commit racing an overwrite that changes the partitioning would land
        without partition values. Returns the row count."""
        rows = self.receipts.read_all()
        table = pa.Table.from_pylist([normalize_receipt(r) for r in rows], schema=RENDER_SCHEMA)
        props = CommitProperties(custom_metadata=commit_metadata("rebuild_from_receipts", {"run_id": run_id, "rows": len(rows)}))

        def overwrite(dt: DeltaTable) -> None:
            write_deltalake(dt, table, mode="overwrite", partition_by=PARTITION_BY, schema_mode="overwrite",
                            commit_properties=props, post_commithook_properties=self.table.hooks)

        self.table.write(overwrite)
        return table.num_rows

    def version(self) -> int | None:
        return self.table.version()

    def history(self, limit: int | None = None) -> list[dict]:
        return self.table.history(limit)
