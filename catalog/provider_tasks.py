"""Provider tasks: what a render has asked a paid API for, saved before its first poll.

An API render (Seedance on ModelArk, a fal endpoint) is a task on someone else's machines that
runs, and is billed, whether or not we are still watching. So the task id is recorded here the
moment the provider answers the create call, and every later run of the same render key reads it
back and polls that task instead of paying for a second one.

Layout: provider_tasks/<key[:2]>/<render_key>/<seq>.json, one JSON object per task created for
the key, seq = 1, 2, ... in creation order. A new task is created only when the latest one ended
without a result that can still be fetched (failed, expired, cancelled, lost), so the latest
record is the one that matters. Records are keyed by render key, not by the pool's attempt
number: an attempt that follows a crashed actor, or the first attempt of a rerun, finds the task
the earlier attempt started and resumes it. Each record is created if absent (two writers that
raced for the same seq: the loser cancels its task and follows the winner's) and then replaced
as the task moves on. Secrets never enter a record: only ids, statuses, usage and redacted URLs.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from .ids import InvalidId, validate_sha256
from .redact import redact_url, scrub
from .render_keys import canonical_json
from .root import Root

PREFIX = "provider_tasks"
LIVE = ("created", "queued", "running")          # the provider may still be working (and billing)
STATUSES = (*LIVE, "succeeded", "failed", "expired", "cancelled", "lost")
_MAX_TEXT = 2000


def task_key(render_key: str, seq: int) -> str:
    render_key = validate_sha256(render_key, "render_key")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq < 10**6:
        raise InvalidId("seq", seq, "must be an integer from 1")
    return f"{PREFIX}/{render_key[:2]}/{render_key}/{seq:06d}.json"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _clean(record: dict[str, Any]) -> dict[str, Any]:
    """Validate the fields a record must have and keep free text short and scrubbed."""
    out = dict(record)
    if out.get("status") not in STATUSES:
        raise InvalidId("status", out.get("status"), f"must be one of {', '.join(STATUSES)}")
    for name in ("provider", "model", "task_id"):
        value = out.get(name)
        if not isinstance(value, str) or not value or len(value) > 200 or not value.isprintable():
            raise InvalidId(name, value, "must be a short printable string")
    if out.get("error_message"):
        out["error_message"] = scrub(str(out["error_message"]))[:_MAX_TEXT]
    out["urls"] = {k: redact_url(v) for k, v in (out.get("urls") or {}).items()}
    return out


class ProviderTasks:
    """The provider-task records of one store root."""

    def __init__(self, root: Root):
        self.root = root

    def tasks(self, render_key: str) -> list[dict[str, Any]]:
        """Every task created for `render_key`, oldest first (empty if none)."""
        render_key = validate_sha256(render_key, "render_key")
        keys = [k for k in self.root.list_files(f"{PREFIX}/{render_key[:2]}/{render_key}") if k.endswith(".json")]
        return [json.loads(data) for _, data in sorted(self.root.read_many(keys).items())]

    def latest(self, render_key: str) -> dict[str, Any] | None:
        found = self.tasks(render_key)
        return found[-1] if found else None

    def record_created(self, render_key: str, seq: int, **fields: Any) -> dict[str, Any] | None:
        """Save a just-created task as number `seq` of `render_key`; None if another writer
        saved a task under that number first (the caller then cancels its own task)."""
        now = _now()
        record = _clean({"status": "created", **fields, "render_key": render_key, "seq": seq,
                         "created_at": now, "updated_at": now})
        created = self.root.write_if_absent(task_key(render_key, seq), canonical_json(record) + b"\n")
        return record if created else None

    def update(self, record: dict[str, Any], **changes: Any) -> dict[str, Any]:
        """Replace a record with `changes` applied (status, usage, error, result facts)."""
        updated = _clean({**record, **changes, "updated_at": _now()})
        self.root.write_replace(task_key(updated["render_key"], updated["seq"]), canonical_json(updated) + b"\n")
        return updated
