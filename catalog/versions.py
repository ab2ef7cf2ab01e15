"""Campaign versions: immutable numbered manifests, the user-facing history of a campaign.

campaigns/<campaign_id>/versions/000001.json is written only if absent; that write is the
commit point of a version. Two publishers racing for the same number: one wins, the other
re-lists and takes the next number. Versions never change; latest is the highest number.
The campaign_versions Delta table mirrors the manifests for queries and is repairable from
them (sync_table); listing and reading always go to the manifests.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable

from .ids import InvalidId, validate_id, validate_sha256
from .delta import DeltaRef, backoff, commit_metadata
from .render_keys import canonical_json
from .receipts import RENDERED, STATUSES
from .redact import get_logger, redact_url, scrub
from .root import Root

log = get_logger(__name__)

VERSIONS_TABLE = "index/campaign_versions"
FORMAT = "horse.campaign_version/1"
_VERSION_FILE = re.compile(r"^(\d{6,})\.json$")

VERSION_SCHEMA = pa.schema([
    ("campaign_id", pa.string()), ("version", pa.int64()), ("uri", pa.string()), ("sha256", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")), ("run_id", pa.string()), ("manifest_uri", pa.string()),
    ("manifest_sha256", pa.string()), ("model_fingerprint", pa.string()), ("code_version", pa.string()),
    ("entries", pa.int64()), ("ok", pa.int64()), ("failed", pa.int64()), ("degraded", pa.int64()),
])


class VersionNotFound(LookupError):
    pass


@dataclass(frozen=True)
class VersionInfo:
    campaign_id: str
    number: int
    uri: str
    sha256: str           # of the version manifest file itself
    created_at: datetime
    run_id: str | None
    manifest_uri: str | None
    manifest_sha256: str | None
    model_fingerprint: str | None
    code_version: str | None
    entries: int
    ok: int
    failed: int
    degraded: int = 0     # rendered, but not as requested


def version_key(campaign_id: str, number: int) -> str:
    campaign_id = validate_id(campaign_id, "campaign_id")
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise InvalidId("version", number, "must be an integer >= 1")
    return f"campaigns/{campaign_id}/versions/{number:06d}.json"


def _opt_str(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidId(field, value, "must be a string")
    return scrub(value)


def normalize_entry(entry: dict, check_uri: Callable[[str, str], None] | None) -> dict:
    if not isinstance(entry, dict):
        raise TypeError(f"a version entry is a dict, not {type(entry).__name__}")
    e = dict(entry)
    e["shot_id"] = validate_id(e.get("shot_id"), "shot_id")
    e["variant"] = validate_id(e.get("variant"), "variant")
    e["render_key"] = validate_sha256(e.get("render_key"), "render_key")
    if e.get("status") not in STATUSES:
        raise InvalidId("status", e.get("status"), f"must be one of {', '.join(STATUSES)}")
    if e["status"] in RENDERED:
        if not e.get("blob_uri"):
            raise InvalidId("blob_uri", None, f"is required for an entry with status {e['status']!r}")
        validate_sha256(e.get("sha256"), "sha256")
    masters = [("qc master", r.get("master_uri")) for r in (e.get("qc") or {}).values()]
    for name, uri in [(name, e.get(name)) for name in ("blob_uri", "poster_uri")] + masters:
        if uri is not None:
            if not isinstance(uri, str):
                raise InvalidId(name, uri, "must be a string")
            if check_uri is not None:
                check_uri(name, uri)
    for name in ("resolution", "rendered_resolution", "fallback"):  # what was asked for, what was delivered
        e[name] = _opt_str(e.get(name), name)
    if isinstance(e.get("error_message"), str):
        e["error_message"] = scrub(e["error_message"])[:4000]
    return e


def _info(campaign_id: str, number: int, uri: str, data: bytes) -> VersionInfo:
    body = json.loads(data)
    entries = body.get("entries", [])
    statuses = Counter(e.get("status") for e in entries)
    return VersionInfo(
        campaign_id=campaign_id, number=number, uri=uri, sha256=hashlib.sha256(data).hexdigest(),
        created_at=datetime.fromisoformat(body["created_at"].replace("Z", "+00:00")),
        run_id=body.get("run_id"), manifest_uri=body.get("manifest_uri"),
        manifest_sha256=body.get("manifest_sha256"), model_fingerprint=body.get("model_fingerprint"),
        code_version=body.get("code_version"), entries=len(entries),
        ok=statuses["ok"], failed=statuses["failed"], degraded=statuses["degraded"],
    )


class CampaignVersions:
    def __init__(self, root: Root, check_uri: Callable[[str, str], None] | None = None,
                 index_version: Callable[[], int | None] | None = None, max_attempts: int = 50):
        self.root = root
        self.check_uri = check_uri
        self.index_version = index_version
        self.max_attempts = max_attempts
        self.table = DeltaRef(root, VERSIONS_TABLE, VERSION_SCHEMA)

    def numbers(self, campaign_id: str) -> list[int]:
        campaign_id = validate_id(campaign_id, "campaign_id")
        prefix = f"campaigns/{campaign_id}/versions"
        found = []
        for key in self.root.list_files(prefix):
            m = _VERSION_FILE.match(key.rsplit("/", 1)[-1])
            if m and key.count("/") == prefix.count("/") + 1:
                found.append(int(m.group(1)))
        return sorted(found)

    def latest(self, campaign_id: str) -> int | None:
        nums = self.numbers(campaign_id)
        return nums[-1] if nums else None

    def publish(self, campaign_id: str, entries: list[dict], manifest_uri: str | None = None,
                manifest_sha256: str | None = None, model_fingerprint: str | None = None,
                code_version: str | None = None, run_id: str | None = None, *,
                notes: str | None = None, contact_sheet_uri: str | None = None) -> int:
        """Publish the next version of a campaign; returns its number. `contact_sheet_uri`, a
        blob of this store, is listed in the version (so GC keeps it as long as the version)."""
        campaign_id = validate_id(campaign_id, "campaign_id")
        if contact_sheet_uri is not None and self.check_uri is not None:
            self.check_uri("contact_sheet_uri", contact_sheet_uri)
        rows = sorted((normalize_entry(e, self.check_uri) for e in entries),
                      key=lambda e: (e["shot_id"], e["variant"]))
        seen = set()
        for e in rows:
            pair = (e["shot_id"], e["variant"])
            if pair in seen:
                raise InvalidId("entries", pair, "lists the same shot variant twice")
            seen.add(pair)
        if manifest_sha256 is not None:
            validate_sha256(manifest_sha256, "manifest_sha256")
        base = {
            "format": FORMAT,
            "campaign_id": campaign_id,
            "run_id": _opt_str(run_id, "run_id"),
            "manifest_uri": redact_url(manifest_uri) if isinstance(manifest_uri, str) else _opt_str(manifest_uri, "manifest_uri"),
            "manifest_sha256": manifest_sha256,
            "model_fingerprint": _opt_str(model_fingerprint, "model_fingerprint"),
            "code_version": _opt_str(code_version, "code_version"),
            "notes": _opt_str(notes, "notes"),
            "contact_sheet_uri": contact_sheet_uri,
            "index_version": self.index_version() if self.index_version else None,
            "entries": rows,
        }
        for attempt in range(self.max_attempts):
            number = (self.latest(campaign_id) or 0) + 1
            created_at = datetime.now(timezone.utc)
            body = {**base, "version": number, "previous_version": number - 1 or None,
                    "created_at": created_at.isoformat().replace("+00:00", "Z")}
            data = canonical_json(body) + b"\n"
            key = version_key(campaign_id, number)
            # Same bytes under the number: our own create, retried after its answer was lost.
            if self.root.write_if_absent(key, data) or self.root.read_bytes(key) == data:
                log.info("published %s version %d (%d entries)", campaign_id, number, len(rows))
                try:
                    self._record([_info(campaign_id, number, self.root.uri(key), data)])
                except Exception as exc:  # the manifest is the commit; the table is repairable
                    log.warning("version %s/%d is published but campaign_versions was not updated "
                                "(run sync_table): %s", campaign_id, number, type(exc).__name__)
                return number
            backoff(attempt)
        raise RuntimeError(f"could not publish a version of {campaign_id} after {self.max_attempts} attempts")

    def _record(self, infos: list[VersionInfo]) -> None:
        if not infos:
            return
        source = pa.Table.from_pylist([{
            "campaign_id": i.campaign_id, "version": i.number, "uri": i.uri, "sha256": i.sha256,
            "created_at": i.created_at, "run_id": i.run_id, "manifest_uri": i.manifest_uri,
            "manifest_sha256": i.manifest_sha256, "model_fingerprint": i.model_fingerprint,
            "code_version": i.code_version, "entries": i.entries, "ok": i.ok, "failed": i.failed,
            "degraded": i.degraded,
        } for i in infos], schema=VERSION_SCHEMA)
        props = CommitProperties(custom_metadata=commit_metadata(
            "record_campaign_versions", {"campaigns": ",".join(sorted({i.campaign_id for i in infos})),
                                         "run_id": infos[-1].run_id}))

        def merge(dt: DeltaTable) -> None:
            (dt.merge(source, "t.campaign_id = s.campaign_id AND t.version = s.version",
                      source_alias="s", target_alias="t", commit_properties=props)
             .when_not_matched_insert_all().execute())

        self.table.write(merge)

    def list(self, campaign_id: str) -> list[VersionInfo]:
        nums = self.numbers(campaign_id)
        keys = {version_key(campaign_id, n): n for n in nums}
        data = self.root.read_many(keys)
        return [_info(campaign_id, n, self.root.uri(k), data[k]) for k, n in keys.items() if k in data]

    def read(self, campaign_id: str, number: int | None = None) -> dict:
        """The version manifest (dict with 'version', 'entries', ...); latest when number is None."""
        if number is None:
            number = self.latest(campaign_id)
            if number is None:
                raise VersionNotFound(f"campaign {campaign_id!r} has no published versions")
        key = version_key(campaign_id, number)
        try:
            data = self.root.read_bytes(key)
        except FileNotFoundError:
            raise VersionNotFound(f"campaign {campaign_id!r} has no version {number}") from None
        body = json.loads(data)
        body["uri"] = self.root.uri(key)
        body["sha256"] = hashlib.sha256(data).hexdigest()
        return body

    def campaigns(self) -> list[str]:
        ids = set()
        for key in self.root.list_files("campaigns"):
            parts = key.split("/")
            if len(parts) == 4 and parts[2] == "versions" and _VERSION_FILE.match(parts[3]):
                ids.add(parts[1])
        return sorted(ids)

    def sync_table(self, campaign_id: str | None = None) -> int:
        """Insert any manifest missing from campaign_versions (after an interrupted publish)."""
        infos = [i for c in ([campaign_id] if campaign_id else self.campaigns()) for i in self.list(c)]
        self._record(infos)
        return len(infos)

    def to_arrow(self, campaign_id: str | None = None) -> pa.Table:
        t = self.table.read_table()
        if t is None:
            return VERSION_SCHEMA.empty_table()
        if campaign_id is not None:
            t = t.filter(pc.equal(t["campaign_id"], campaign_id))
        return t.sort_by([("campaign_id", "ascending"), ("version", "ascending")])

    def _manifests(self) -> list[dict]:
        """Every version manifest of every campaign, parsed."""
        keys = [k for k in self.root.list_files("campaigns") if _VERSION_FILE.match(k.rsplit("/", 1)[-1])]
        return [json.loads(data) for data in self.root.read_many(keys).values()]

    def referenced_uris(self) -> set[str]:
        """Every URI string that any version manifest mentions (for GC)."""
        out: set[str] = set()
        for body in self._manifests():
            _collect_uris(body, out)
        return out

    def index_versions(self) -> set[int]:
        """The index versions that campaign versions were published at: maintenance keeps each
        readable by time travel, however old."""
        found = (body.get("index_version") for body in self._manifests())
        return {v for v in found if isinstance(v, int) and not isinstance(v, bool)}


def _collect_uris(obj: Any, out: set[str]) -> None:
    if isinstance(obj, dict):
        for v in obj.values():
            _collect_uris(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _collect_uris(v, out)
    elif isinstance(obj, str) and "/blobs/sha256/" in obj:
        out.add(obj)
