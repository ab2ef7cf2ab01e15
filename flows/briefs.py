"""Briefs: CSV or YAML shot lists, the way people write campaigns, converted to the Parquet
manifest schema (`flows.manifest`), validated by the same rules. Only valid rows are written;
every other row comes back as a `RowError`."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any, Collection, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from flows.manifest import SCHEMA, Manifest, ManifestError, Shot, validate_rows

_LIST_COLUMNS = ("languages", "aspect_ratios", "tags", "destinations", "must_say")
_INT_COLUMNS = ("takes", "seed", "priority")


def _brief_records(path: Path) -> list[dict[str, Any]]:
    if path.suffix.lower() in (".yaml", ".yml"):
        data = yaml.safe_load(path.read_text())
        shots = data.get("shots") if isinstance(data, dict) else data
        if not isinstance(shots, list):
            raise ManifestError(f"brief {path}: expected a list of shots (or a mapping with 'shots:')")
        defaults = {k: v for k, v in data.items() if k != "shots"} if isinstance(data, dict) else {}
        return [{**defaults, **shot} if isinstance(shot, dict) else {"_invalid": shot} for shot in shots]
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return [_csv_record(row) for row in csv.DictReader(f)]
    raise ManifestError(f"brief {path}: expected a .csv, .yaml or .yml file")


def _csv_record(row: dict[str, str]) -> dict[str, Any]:
    """CSV cells are text: lists are ';'- or ','-separated, dialogue is JSON, numbers are parsed."""
    record: dict[str, Any] = {}
    for key, value in row.items():
        value = (value or "").strip()
        if value == "":
            continue
        if key in _LIST_COLUMNS:
            record[key] = [part.strip() for part in value.replace(";", ",").split(",") if part.strip()]
        elif key == "dialogue":
            try:
                record[key] = json.loads(value)
            except json.JSONDecodeError:
                record[key] = value  # left for validation to report
        else:
            record[key] = value
    return record


def _coerce(record: dict[str, Any]) -> dict[str, Any]:
    """Best-effort typing so that the Parquet columns have the schema's types; anything that
    does not convert is kept as-is and reported by validation."""
    out = dict(record)
    for key in _INT_COLUMNS:
        if isinstance(out.get(key), str):
            try:
                out[key] = int(out[key])
            except ValueError:
                pass
    if isinstance(out.get("duration_s"), (str, int)):
        try:
            out["duration_s"] = float(out["duration_s"])
        except ValueError:
            pass
    for key in _LIST_COLUMNS:
        if isinstance(out.get(key), str):
            out[key] = [out[key]]
    return out


def build_manifest(brief: Path, output: Path, input_roots: Sequence[str] = (),
                   destinations: Collection[str] | None = None, adapters: Collection[str] = ()) -> tuple[Manifest, Path]:
    """Convert a CSV/YAML brief to a Parquet manifest; only valid rows are written."""
    records = [_coerce(r) for r in _brief_records(brief)]
    shots, errors = validate_rows(records, input_roots, destinations, adapters=adapters)
    rows = [shot_to_record(shot) for shot in shots]
    table = pa.Table.from_pylist(rows, schema=SCHEMA) if rows else SCHEMA.empty_table()
    output.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, output)
    manifest = Manifest(uri=str(output), sha256=hashlib.sha256(output.read_bytes()).hexdigest(), shots=shots, errors=errors, rows=len(records))
    return manifest, output


def shot_to_record(shot: Shot) -> dict[str, Any]:
    record = shot.model_dump(exclude={"row", "extra"})
    record["dialogue"] = [line.model_dump() for line in shot.dialogue]
    for key in _LIST_COLUMNS:
        record[key] = list(record[key])
    return record
