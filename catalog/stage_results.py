"""Stage results: what a render keeps between its stages (`model.stages`), found by stage key.

    blobs/sha256/ab/cd/<sha256>.safetensors   the result itself, content-addressed like every blob
    stages/<key[:2]>/<stage_key>.json         its record: the blob, the job that made it, its retention

The stage key is `render_key(model.stages.stage_key_inputs(...))`: the hash of every input up to
that stage. The blob is stored first, then the record, so a record names a stored blob (unless GC
or a person removed it since: `load` then says the result is gone); a blob without a record is an
orphan that GC collects after its grace period. "Which stage results exist for these keys" is one
concurrent read of their records; a read that fails raises, it never looks like absence.

Retention, kept in the record because only the maker knows why it kept a result:
- "preview": the base result of a preview take, kept `preview_days` so the take can be promoted;
- "retry": any other stage result, kept `retry_hours` for tail-only retries of a run in flight;
- a result that a campaign version names (the lineage of a promoted clip) is kept, record and
  blob, as long as that version (GC passes those URIs in as `pinned`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable

from .blobs import BlobStore
from .ids import InvalidId, validate_sha256
from .redact import get_logger
from .render_keys import canonical_json
from .root import Root

log = get_logger(__name__)

PREFIX = "stages"
EXT = "safetensors"
FORMAT = "horse.stage_result/1"
PREVIEW, RETRY = "preview", "retry"
RETENTIONS = (RETRY, PREVIEW)  # weakest first: a preview run upgrades a record a plain render made


def record_key(stage_key: str) -> str:
    stage_key = validate_sha256(stage_key, "stage_key")
    return f"{PREFIX}/{stage_key[:2]}/{stage_key}.json"


@dataclass(frozen=True)
class StageRecord:
    stage_key: str
    stage: str                       # "base" or "sr"
    blob_uri: str
    sha256: str
    bytes: int
    retention: str                   # PREVIEW or RETRY
    created_at: datetime             # when it was stored (or its retention last upgraded)
    made_by: dict = field(default_factory=dict)  # render_key, campaign_id, shot_id, variant, attempt (try label)

    def to_json(self) -> bytes:
        body = {**asdict(self), "format": FORMAT,
                "created_at": self.created_at.isoformat().replace("+00:00", "Z")}
        return canonical_json(body) + b"\n"

    @classmethod
    def from_json(cls, data: bytes, where: str) -> "StageRecord":
        try:
            body = json.loads(data)
            if body.pop("format", None) != FORMAT:
                raise ValueError(f"format is not {FORMAT}")
            body["created_at"] = datetime.fromisoformat(body["created_at"].replace("Z", "+00:00"))
            return cls(**body)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"stage result record {where} is unreadable ({e})") from None

    def expires(self, preview_days: float, retry_hours: float) -> datetime:
        keep = timedelta(days=preview_days) if self.retention == PREVIEW else timedelta(hours=retry_hours)
        return self.created_at + keep


@dataclass(frozen=True)
class Retention:
    """How long GC keeps stage results that no campaign version names (settings `gc.*`)."""

    preview_days: float = 30.0
    retry_hours: float = 48.0


class StageResults:
    def __init__(self, root: Root, blobs: BlobStore):
        self.root = root
        self.blobs = blobs

    def put(self, stage_key: str, stage: str, data: bytes, *, retention: str = RETRY,
            made_by: dict | None = None) -> StageRecord:
        """Store a stage result's bytes and record them under `stage_key`. The first record wins
        (a resume must see the bytes the earlier stages really produced); a stronger retention
        upgrades it, and a record whose blob is gone is replaced."""
        if retention not in RETENTIONS:
            raise InvalidId("retention", retention, f"must be one of {', '.join(RETENTIONS)}")
        blob = self.blobs.put(data, ext=EXT)
        record = StageRecord(validate_sha256(stage_key, "stage_key"), stage, blob.uri, blob.sha256, blob.bytes,
                             retention, datetime.now(timezone.utc), dict(made_by or {}))
        key = record_key(stage_key)
        if self.root.write_if_absent(key, record.to_json()):
            return record
        existing = self.existing([stage_key]).get(stage_key)
        if existing is not None and self.root.exists(self.blobs.key_from(existing.blob_uri, EXT)):
            if RETENTIONS.index(existing.retention) >= RETENTIONS.index(retention):
                return existing
            record = StageRecord(**{**asdict(existing), "retention": retention, "created_at": record.created_at})
        self.root.write_replace(key, record.to_json())
        return record

    def existing(self, stage_keys: Iterable[str]) -> dict[str, StageRecord]:
        """{stage_key: record} of the keys that have one: one concurrent read of their records."""
        keys = {record_key(k): k for k in stage_keys}
        found = self.root.read_many(keys)
        return {keys[k]: StageRecord.from_json(data, self.root.uri(k)) for k, data in found.items()}

    def load(self, record: StageRecord) -> bytes | None:
        """The result's bytes, or None when its blob is gone (collected, or removed by hand)."""
        try:
            with self.blobs.open(record.blob_uri, EXT) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def records(self) -> list[StageRecord]:
        """Every record in the store (for GC); an unreadable one raises."""
        keys = [k for k in self.root.list_files(PREFIX) if k.endswith(".json") and "/.tmp-" not in k]
        return [StageRecord.from_json(data, self.root.uri(k)) for k, data in self.root.read_many(keys).items()]

    def expire(self, retention: Retention, pinned: set[str], dry_run: bool,
               now: datetime | None = None) -> tuple[set[str], list[StageRecord]]:
        """(blob URIs of the results still kept, the records past their retention). Records a
        version pins (by blob URI) never expire. Unless `dry_run`, the expired records are deleted
        here; their blobs are then unreferenced and go with GC's blob pass (a crash in between
        leaves orphan blobs, which a later GC collects, never a record without its blob)."""
        now = now or datetime.now(timezone.utc)
        kept, expired = set(), []
        for record in self.records():
            if record.blob_uri in pinned or now < record.expires(retention.preview_days, retention.retry_hours):
                kept.add(record.blob_uri)
            else:
                expired.append(record)
        if not dry_run:
            for record in expired:
                self.root.delete(record_key(record.stage_key))
        if expired:
            log.info("stage results: %d past their retention%s", len(expired), "" if dry_run else ", records deleted")
        return kept, expired
