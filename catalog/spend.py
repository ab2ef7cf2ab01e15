"""Spend: a Delta table (index/spend) with one row per run, campaign and device type: the
device-seconds the run spent on that campaign and what they cost (device type `api:<backend>`:
the clips an API provider rendered, their USD and the provider's usage in tokens; each clip's own
usage is in its receipt). Rows are appended when a run ends and never change; a campaign's spend
is the sum of its rows over every run, which is what a campaign budget is held against."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, write_deltalake

from .delta import DeltaRef, commit_metadata
from .ids import InvalidId, validate_id
from .root import Root

SPEND_TABLE = "index/spend"
SPEND_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("campaign_id", pa.string()), ("device_type", pa.string()),
    ("gpu_seconds", pa.float64()),    # device-seconds of every finished attempt (failed ones too)
    ("money", pa.float64()),          # gpu_seconds at the configured price of device_type; null if none
    ("currency", pa.string()),
    ("renders", pa.int64()),          # attempts that spent them
    ("not_rendered_budget", pa.int64()),  # shots the run left for later because a budget was reached
    ("usage_tokens", pa.int64()),     # api:<backend> rows: tokens the provider reported for the clips; null if none
    ("estimated_tokens", pa.int64()),  # api:<backend> rows: tokens estimated for clips whose provider reports none
    ("created_at", pa.timestamp("us", tz="UTC")),
])


def _row(row: dict, now: datetime) -> dict:
    out = {"run_id": row.get("run_id"), "campaign_id": validate_id(row.get("campaign_id"), "campaign_id"),
           "device_type": row.get("device_type"), "currency": row.get("currency"), "created_at": now}
    if not isinstance(out["run_id"], str) or not out["run_id"]:
        raise InvalidId("run_id", out["run_id"], "must be a non-empty string")
    for name in ("gpu_seconds", "money"):
        value = row.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise InvalidId(name, value, "must be a number >= 0")
        out[name] = None if value is None else float(value)
    for name in ("renders", "not_rendered_budget"):
        out[name] = int(row.get(name) or 0)
    for name in ("usage_tokens", "estimated_tokens"):
        value = row.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise InvalidId(name, value, "must be a whole number >= 0")
        out[name] = value
    return out


class SpendTable:
    def __init__(self, root: Root):
        self.table = DeltaRef(root, SPEND_TABLE, SPEND_SCHEMA)

    def record(self, rows: Iterable[dict], *, run_id: str | None = None) -> int:
        """Append a run's spend rows (one commit); returns how many."""
        now = datetime.now(timezone.utc)
        table = pa.Table.from_pylist([_row(r, now) for r in rows], schema=SPEND_SCHEMA)
        if not table.num_rows:
            return 0
        props = CommitProperties(custom_metadata=commit_metadata("record_spend", {"run_id": run_id, "rows": table.num_rows}))

        def append(dt: DeltaTable) -> None:
            write_deltalake(dt, table, mode="append", commit_properties=props)

        self.table.write(append)
        return table.num_rows

    def to_arrow(self, campaign_id: str | None = None, run_id: str | None = None) -> pa.Table:
        table = self.table.read_table()
        if table is None:
            return SPEND_SCHEMA.empty_table()
        for column, value in (("campaign_id", campaign_id), ("run_id", run_id)):
            if value is not None:
                table = table.filter(pc.equal(table[column], value))
        return table

    def totals(self, campaign_id: str | None = None, run_id: str | None = None) -> dict[str, float]:
        """{"gpu_seconds", "money"} summed over the matching rows (money: over priced rows)."""
        table = self.to_arrow(campaign_id, run_id)
        return {name: float(pc.sum(table[name]).as_py() or 0.0) for name in ("gpu_seconds", "money")}

    def by_campaign(self) -> dict[str, dict[str, float]]:
        """{campaign_id: {"gpu_seconds", "money"}} over every run."""
        table = self.to_arrow()
        if not table.num_rows:
            return {}
        grouped = table.group_by("campaign_id").aggregate([("gpu_seconds", "sum"), ("money", "sum")])
        return {row["campaign_id"]: {"gpu_seconds": row["gpu_seconds_sum"] or 0.0, "money": row["money_sum"] or 0.0}
                for row in grouped.to_pylist()}
