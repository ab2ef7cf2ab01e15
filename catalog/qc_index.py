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
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable

from .delta import DeltaRef, commit_metadata
from .ids import validate_sha256
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
        self.table = DeltaRef(root, QC_TABLE, QC_SCHEMA)

    def commit(self, receipts: Iterable[dict], *, run_id: str | None = None) -> int:
        """Insert the QC rows of these receipts that the table does not have; returns rows offered."""
        rows = [row for r in receipts for row in qc_rows(normalize_receipt(r))]
        if not rows:
            return 0
        source = pa.Table.from_pylist(rows, schema=QC_SCHEMA)
        props = CommitProperties(custom_metadata=commit_metadata("commit_qc", {"run_id": run_id, "rows": len(rows)}))

        def merge(dt: DeltaTable) -> None:
            (dt.merge(source, "t.render_key = s.render_key AND t.destination = s.destination AND t.check = s.check",
                      source_alias="s", target_alias="t", commit_properties=props)
             .when_not_matched_insert_all().execute())

        self.table.write(merge)
        return len(rows)

    def to_arrow(self, *, render_keys: Iterable[str] | None = None, **equal: Any) -> pa.Table:
        """The rows, optionally only those of `render_keys` and with columns equal to the given
        values (e.g. destination="broadcast-eu", check="true_peak", passed=False)."""
        table = self.table.read_table()
        if table is None:
            return QC_SCHEMA.empty_table()
        mask = None
        if render_keys is not None:
            keys = sorted({validate_sha256(k, "render_key") for k in render_keys})
            mask = pc.is_in(table["render_key"], value_set=pa.array(keys, pa.string()))
        for column, value in equal.items():
            m = pc.equal(table[column], value)
            mask = m if mask is None else pc.and_(mask, m)
        return table if mask is None else table.filter(mask)

    def results(self, render_keys: Iterable[str]) -> dict[str, dict[str, dict[str, Any]]]:
        """{render_key: summarise(its rows)} for the keys that have QC rows."""
        keys = list(render_keys)
        if not keys:
            return {}
        per_key: dict[str, list[dict]] = {}
        for row in self.to_arrow(render_keys=keys).to_pylist():
            per_key.setdefault(row["render_key"], []).append(row)
        return {key: summarise(rows) for key, rows in per_key.items()}

    def referenced_uris(self) -> set[str]:
        """Every master blob a row names (for GC)."""
        table = self.table.read_table(["master_uri"])
        return set() if table is None else {u for u in table["master_uri"].to_pylist() if u}
