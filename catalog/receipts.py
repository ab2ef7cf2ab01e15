"""Receipts: one JSON object per finished render, the source of truth the index is rebuilt from.

Statuses: `ok` (rendered as requested), `degraded` (rendered, but not as requested, e.g. the
OOM ladder rendered a 1080p job at 540p: `resolution` is the requested tier, `rendered_resolution`
what was delivered, `fallback` the ladder rungs used) and `failed`. Only `ok` counts as rendered.

An ok receipt (receipts/ab/<render_key>.json) is written only if absent: the first one wins (GPU
outputs are not bit-exact, so later duplicates are dropped). Any other receipt goes to the
replaceable slot (receipts/ab/<render_key>.failed.json, named before `degraded` existed): a
later attempt replaces it, and an ok receipt supersedes it. So a fallback render is never
cached under the key of what was asked for.

Delivery QC (a run that names destinations): `qc_status` says whether the clip passed every
destination ("passed"/"failed"), `rendered_seed` which seed the delivered clip was rendered with
(a re-roll after a black or frozen picture changes it), and two receipt-only JSON fields keep the
detail: `qc` (per destination: every check with its measured value and limit, the master's blob)
and `qc_attempts` (every seed rendered for the take and what its picture QC found). The index
carries only the two short fields; `index/qc` (catalog.qc_index) has one row per check.

Dialogue gate: `dialogue_status` (in the index) is "passed", "dialogue_failed" (no re-roll passed:
the best attempt was delivered) or "unchecked" (the clip has a line no recogniser of the run could
hear), absent for a clip without a line; the receipt-only JSON field `dialogue` is the delivered
attempt's record (transcript, error rate, reasons, seed); every attempt's is in `qc_attempts`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from .ids import InvalidId, validate_id, validate_sha256
from .render_keys import canonical_json
from .redact import scrub
from .root import Root

STRING_FIELDS = (
    "render_key", "campaign_id", "shot_id", "variant", "language", "aspect_ratio", "blob_uri",
    "sha256", "poster_uri", "status", "error_class", "error_message", "model_fingerprint",
    "timings", "actor_id", "node_id", "run_id", "extra", "resolution", "rendered_resolution", "fallback",
    "qc_status", "dialogue_status", "profile", "device_type", "device_seconds",
)
INT_FIELDS = ("take", "seed", "bytes", "attempt", "width", "height", "frames", "rendered_seed")
# Kept as canonical JSON text; qc, qc_attempts and dialogue stay out of the index, device_seconds
# (seconds per stage, what quotes learn from) is in it.
JSON_FIELDS = ("timings", "device_seconds", "qc", "qc_attempts", "dialogue")
QC_STATUSES = ("passed", "failed")
DIALOGUE_STATUSES = ("passed", "dialogue_failed", "unchecked")
FLOAT_FIELDS = ("gpu_seconds", "duration_s")
STATUSES = ("ok", "degraded", "failed")
RENDERED = ("ok", "degraded")  # statuses that come with a file
_MAX_TEXT = 4000


def receipt_key(render_key: str, replaceable: bool = False) -> str:
    """Where the ok receipt of a render key lives, or (replaceable) its latest other receipt."""
    render_key = validate_sha256(render_key, "render_key")
    return f"receipts/{render_key[:2]}/{render_key}{'.failed' if replaceable else ''}.json"


def _to_utc(value: Any) -> datetime:
    if value is None:
        return datetime.now(timezone.utc)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidId("created_at", value, "must be an ISO 8601 timestamp") from None
    if not isinstance(value, datetime):
        raise InvalidId("created_at", value, "must be a datetime or ISO 8601 string")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def normalize_receipt(receipt: dict, check_uri: Callable[[str, str], None] | None = None) -> dict:
    """Validate and complete a receipt: every known field present, typed; unknown fields go
    to `extra` (JSON). `check_uri(field, uri)` raises if a URI is not a blob of this store."""
    if not isinstance(receipt, dict):
        raise TypeError(f"a receipt is a dict, not {type(receipt).__name__}")
    r = dict(receipt)
    out: dict[str, Any] = {}
    out["render_key"] = validate_sha256(r.pop("render_key", None), "render_key")
    out["campaign_id"] = validate_id(r.pop("campaign_id", None), "campaign_id")
    out["shot_id"] = validate_id(r.pop("shot_id", None), "shot_id")
    out["variant"] = validate_id(r.pop("variant", None), "variant")
    status = r.pop("status", None)
    if status not in STATUSES:
        raise InvalidId("status", status, f"must be one of {', '.join(STATUSES)}")
    out["status"] = status
    for name in JSON_FIELDS:
        out[name] = _json_text(name, r.pop(name, None))
    out["created_at"] = _to_utc(r.pop("created_at", None))
    for name in ("language", "aspect_ratio", "blob_uri", "sha256", "poster_uri", "error_class",
                 "error_message", "model_fingerprint", "actor_id", "node_id", "run_id", "resolution",
                 "rendered_resolution", "fallback", "qc_status", "dialogue_status", "profile", "device_type"):
        value = r.pop(name, None)
        if value is not None:
            value = (value if isinstance(value, str) else str(value))[:_MAX_TEXT]
        out[name] = value
    if out["error_message"]:
        out["error_message"] = scrub(out["error_message"])
    if out["qc_status"] not in (None, *QC_STATUSES):
        raise InvalidId("qc_status", out["qc_status"], f"must be one of {', '.join(QC_STATUSES)} (or absent)")
    if out["dialogue_status"] not in (None, *DIALOGUE_STATUSES):
        raise InvalidId("dialogue_status", out["dialogue_status"],
                        f"must be one of {', '.join(DIALOGUE_STATUSES)} (or absent)")
    for name in INT_FIELDS:
        value = r.pop(name, None)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
                raise InvalidId(name, value, "must be an integer")
            value = int(value)
        out[name] = value
    for name in FLOAT_FIELDS:
        value = r.pop(name, None)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidId(name, value, "must be a number")
            value = float(value)
        out[name] = value
    extra = r.pop("extra", None)
    if isinstance(extra, str):
        extra = json.loads(extra)
    extra = {**(extra or {}), **r}
    out["extra"] = canonical_json(extra).decode() if extra else None
    if out["status"] in RENDERED:
        if not out["blob_uri"]:
            raise InvalidId("blob_uri", None, f"is required for a receipt with status {out['status']!r}")
        validate_sha256(out["sha256"], "sha256")
    elif out["sha256"] is not None:
        validate_sha256(out["sha256"], "sha256")
    if check_uri is not None:
        for name in ("blob_uri", "poster_uri"):
            if out[name]:
                check_uri(name, out[name])
        for uri in master_uris(out):
            check_uri("qc master", uri)
    return out


def _json_text(name: str, value: Any) -> str | None:
    if isinstance(value, (dict, list)):
        return canonical_json(value).decode()
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            raise InvalidId(name, value, "must be a dict, a list or a JSON string") from None
    elif value is not None:
        raise InvalidId(name, value, "must be a dict, a list or a JSON string")
    return value


def master_uris(receipt: dict) -> list[str]:
    """The destination masters a receipt's QC names."""
    qc = json.loads(receipt.get("qc") or "{}")
    return [d["master"]["uri"] for d in qc.values() if d.get("master")]


def receipt_json(receipt: dict) -> bytes:
    body = dict(receipt)
    body["created_at"] = body["created_at"].isoformat().replace("+00:00", "Z")
    return canonical_json(body) + b"\n"


def parse_receipt(data: bytes) -> dict:
    body = json.loads(data)
    body["created_at"] = _to_utc(body.get("created_at"))
    return body


class Receipts:
    def __init__(self, root: Root, check_uri: Callable[[str, str], None] | None = None):
        self.root = root
        self.check_uri = check_uri

    def write(self, receipt: dict) -> dict:
        """Store a receipt; returns the canonical one (an earlier successful receipt wins)."""
        r = normalize_receipt(receipt, self.check_uri)
        data = receipt_json(r)
        if r["status"] == "ok":
            if self.root.write_if_absent(receipt_key(r["render_key"]), data):
                return r
            return self.read(r["render_key"])
        existing = self.read(r["render_key"])
        if existing is not None and existing["status"] == "ok":
            return existing
        self.root.write_replace(receipt_key(r["render_key"], replaceable=True), data)
        return r

    def read(self, render_key: str) -> dict | None:
        for replaceable in (False, True):
            key = receipt_key(render_key, replaceable)
            try:
                return parse_receipt(self.root.read_bytes(key))
            except FileNotFoundError:
                continue
        return None

    def read_ok(self, render_keys: Iterable[str]) -> dict[str, dict]:
        """{render_key: receipt} of the successful receipts among `render_keys`: one read per
        key (concurrent on object stores), so the cost follows the keys asked for, never the
        number of receipts in the store (a listing of receipts/ would)."""
        wanted = {receipt_key(k) for k in render_keys}
        return {r["render_key"]: r for r in map(parse_receipt, self.root.read_many(wanted).values())}

    def referenced_uris(self) -> set[str]:
        """Every blob URI a receipt names (for GC): clip, poster and destination masters."""
        return {u for r in self.read_all() for u in (r.get("blob_uri"), r.get("poster_uri"), *master_uris(r)) if u}

    def read_all(self) -> list[dict]:
        """Every receipt, one per render key (a success over a failure)."""
        keys = self.root.list_files("receipts")
        data = self.root.read_many(k for k in keys if k.endswith(".json") and "/.tmp-" not in k)
        best: dict[str, dict] = {}
        for key, blob in data.items():
            r = parse_receipt(blob)
            prior = best.get(r["render_key"])
            if prior is None or (prior["status"] != "ok" and r["status"] == "ok"):
                best[r["render_key"]] = r
        return list(best.values())
