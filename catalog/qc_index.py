"""The delivery QC index: a Delta table (index/qc) with one row per clip × destination × check.

Rows come from the receipts' `qc` field, committed with the render index (and rebuilt the same
way). A render key's QC never changes (the key covers the destinations' specs), so a commit only
inserts rows it does not have. Any question about delivery is one query, e.g. every clip that
failed broadcast-eu true peak, with pyarrow:

    import deltalake, pyarrow.compute as pc
    qc = deltalake.DeltaTable(f"{store_root}/index/qc").to_pyarrow_table()
    failed = qc.filter((pc.field("destination") == "broadcast-eu") & (pc.field("check") == "true_peak")
                       & ~pc.field("passed"))

or in SQL with deltalake's own engine (DataFusion):

    pyarrow.table(deltalake.QueryBuilder().register("qc", deltalake.DeltaTable(...)).execute(
        "SELECT shot_id, variant, measured FROM qc WHERE destination = 'broadcast-eu' "
        "AND \"check\" = 'true_peak' AND NOT passed").read_all())

or `Store(url).qc.to_arrow(destination="broadcast-eu", check="true_peak", passed=False)`. (Filter
the loaded table, not the dataset scan: MERGE writes text as string_view, which pyarrow's scan
filters cannot compare with a string yet.) `measured` is the measured value as JSON text (a
number, a codec name, ...); `value` is the same as a float when it is a number, for range queries.

The dialogue gate's result is one row per clip with check "dialogue" and destination "" (it holds
for every destination; the limit applied was the strictest of them): `passed`, `value` the error rate, `measured` {error_rate, transcript, language_detected,
missing_terms, reason, seed, attempts} as JSON, `limit` e.g. "WER <= 0.2". Every clip whose speech
failed: `to_arrow(check="dialogue", passed=False)`. A clip whose line went unchecked (no recogniser
could hear it) has no row: nothing was measured; the render index says `dialogue_status: unchecked`.

Layout: partitioned by campaign_id like the render index (catalog/index.py, chosen by measurement
in benchmarks/scale.py), and it grows faster (a row per destination and check): a commit's MERGE
scans only its campaigns' files, and `results(..., campaigns=)` reads only theirs. Nothing
time-travels to it (versions carry their QC summaries), so maintenance compacts and vacuums it
within the retention.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable

from .delta import DeltaRef, commit_metadata
from .ids import validate_id, validate_sha256
from .receipts import RENDERED, normalize_receipt
from .root import Root

QC_TABLE = "index/qc"
QC_SCHEMA = pa.schema([
    ("render_key", pa.string()), ("campaign_id", pa.string()), ("shot_id", pa.string()), ("variant", pa.string()),
    ("destination", pa.string()), ("check", pa.string()), ("passed", pa.bool_()), ("measured", pa.string()),
    ("value", pa.float64()), ("limit", pa.string()), ("master_uri", pa.string()), ("master_sha256", pa.string()),
    ("rendered_seed", pa.int64()), ("run_id", pa.string()), ("created_at", pa.timestamp("us", tz="UTC")),
])


def qc_rows(receipt: dict) -> list[dict[str, Any]]:
    """The index rows of one normalised receipt: one per destination and check (none without QC)."""
    if receipt["status"] not in RENDERED or not receipt.get("qc"):
        return []
    rows = []
    for destination, result in sorted(json.loads(receipt["qc"]).items()):
        master = result.get("master") or {}
        for check, c in result["checks"].items():
            measured = c.get("measured")
            number = isinstance(measured, (int, float)) and not isinstance(measured, bool) and math.isfinite(measured)
            rows.append({
                "render_key": receipt["render_key"], "campaign_id": receipt["campaign_id"],
                "shot_id": receipt["shot_id"], "variant": receipt["variant"], "destination": destination,
                "check": check, "passed": bool(c["passed"]), "measured": json.dumps(measured),
                "value": float(measured) if number else None, "limit": c.get("limit"),
                "master_uri": master.get("uri"), "master_sha256": master.get("sha256"),
                "rendered_seed": receipt.get("rendered_seed"), "run_id": receipt.get("run_id"),
                "created_at": receipt["created_at"],
            })
    return rows


DIALOGUE_CHECK = "dialogue"


def dialogue_row(receipt: dict) -> dict[str, Any] | None:
    """The dialogue gate's row of one normalised receipt (None without a line, or unchecked)."""
    if receipt["status"] not in RENDERED or receipt.get("dialogue_status") not in ("passed", "dialogue_failed"):
        return None
    d = json.loads(receipt["dialogue"])
    rate = d.get("error_rate")
    measured = {k: d.get(k) for k in ("error_rate", "transcript", "language_detected", "missing_terms", "reason",
                                      "seed", "attempts")}
    return {
        "render_key": receipt["render_key"], "campaign_id": receipt["campaign_id"], "shot_id": receipt["shot_id"],
        "variant": receipt["variant"], "destination": "", "check": DIALOGUE_CHECK,
        "passed": d["status"] == "passed",
        "measured": json.dumps(measured, ensure_ascii=False), "value": None if rate is None else float(rate),
        "limit": f"{d['metric'].upper()} <= {d['max_error_rate']}" if "metric" in d else None,
        "master_uri": None, "master_sha256": None, "rendered_seed": receipt.get("rendered_seed"),
        "run_id": receipt.get("run_id"), "created_at": receipt["created_at"],
    }


def summarise(rows: Iterable[dict]) -> dict[str, dict[str, Any]]:
    """Per destination: passed, the master's blob, and every check as {passed, measured, limit}
    (what a campaign version entry carries), from index rows of one clip."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        d = out.setdefault(row["destination"], {"passed": True, "master_uri": row["master_uri"],
                                                "master_sha256": row["master_sha256"], "checks": {}})
        d["checks"][row["check"]] = {"passed": row["passed"], "measured": json.loads(row["measured"]),
                                     "limit": row["limit"]}
        d["passed"] = d["passed"] and row["passed"]
    return out


class QCIndex:
    def __init__(self, root: Root):
        self.table = DeltaRef(root, QC_TABLE, QC_SCHEMA, partition_by=["campaign_id"])

    def commit(self, receipts: Iterable[dict], *, run_id: str | None = None) -> int:
        """Insert the QC rows of these receipts that the table does not have; returns rows offered."""
        normalised = [normalize_receipt(r) for r in receipts]
        rows = [row for r in normalised for row in qc_rows(r)]
        rows += [row for row in map(dialogue_row, normalised) if row is not None]
        if not rows:
            return 0
        source = pa.Table.from_pylist(rows, schema=QC_SCHEMA)
        props = CommitProperties(custom_metadata=commit_metadata("commit_qc", {"run_id": run_id, "rows": len(rows)}))

        def merge(dt: DeltaTable) -> None:
            # The campaign in the predicate prunes the target to the source's campaigns (see
            # RenderIndex._merge); a key's rows all carry the campaign that rendered it first.
            (dt.merge(source, "t.campaign_id = s.campaign_id AND t.render_key = s.render_key "
                      "AND t.destination = s.destination AND t.check = s.check",
                      source_alias="s", target_alias="t", streamed_exec=False, commit_properties=props)
             .when_not_matched_insert_all().execute())

        self.table.write(merge)
        return len(rows)

    def to_arrow(self, *, render_keys: Iterable[str] | None = None, campaigns: Iterable[str] | None = None,
                 **equal: Any) -> pa.Table:
        """The rows, optionally only those of `render_keys` and with columns equal to the given
        values (e.g. destination="broadcast-eu", check="true_peak", passed=False). `campaigns`
        reads only those campaigns' files (rows of other campaigns are left out)."""
        where = None
        if campaigns is not None:
            campaigns = sorted({validate_id(c, "campaign_id") for c in campaigns})
            if not campaigns:
                return QC_SCHEMA.empty_table()
            where = [("campaign_id", "in", campaigns)]
        table = self.table.read_table(files_where=where)
        if table is None:
            return QC_SCHEMA.empty_table()
        mask = None
        if render_keys is not None:
            keys = sorted({validate_sha256(k, "render_key") for k in render_keys})
            mask = pc.is_in(table["render_key"], value_set=pa.array(keys, pa.string()))
        if campaigns is not None:  # an unpartitioned (older) table's files are pruned by statistics only
            m = pc.is_in(table["campaign_id"], value_set=pa.array(campaigns, pa.string()))
            mask = m if mask is None else pc.and_(mask, m)
        for column, value in equal.items():
            m = pc.equal(table[column], value)
            mask = m if mask is None else pc.and_(mask, m)
        return table if mask is None else table.filter(mask)

    def results(self, render_keys: Iterable[str], campaigns: Iterable[str] | None = None
                ) -> dict[str, dict[str, dict[str, Any]]]:
        """{render_key: summarise(its rows)} for the keys that have QC rows (`campaigns`: only
        rows of those campaigns, reading only their files; a key cached from another campaign
        has its rows there, so pass every campaign the keys may have been rendered in, or None)."""
        keys = list(render_keys)
        if not keys:
            return {}
        per_key: dict[str, list[dict]] = {}
        for row in self.to_arrow(render_keys=keys, campaigns=campaigns).to_pylist():
            if row["check"] != DIALOGUE_CHECK:  # per destination; the clip's dialogue: dialogue_results
                per_key.setdefault(row["render_key"], []).append(row)
        return {key: summarise(rows) for key, rows in per_key.items()}

    def dialogue_results(self, render_keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """{render_key: {status, ...measured, limit}} of the dialogue gate for the keys that have a row."""
        keys = list(render_keys)
        if not keys:
            return {}
        out = {}
        for row in self.to_arrow(render_keys=keys, check=DIALOGUE_CHECK).to_pylist():
            status = "passed" if row["passed"] else "dialogue_failed"
            out[row["render_key"]] = {"status": status, **json.loads(row["measured"]), "limit": row["limit"]}
        return out

    def referenced_uris(self) -> set[str]:
        """Every master blob a row names (for GC)."""
        table = self.table.read_table(["master_uri"])
        return set() if table is None else {u for u in table["master_uri"].to_pylist() if u}
