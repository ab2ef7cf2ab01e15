"""Review decisions on record: an append-only Delta table (index/approvals) of decision events.

A decision is about a *slot*: one shot in one language and aspect ratio (`en-16x9`; `16x9` for a
shot without a language axis), whose takes (`en-16x9-t1`, `en-16x9-t2-preview`, ...) compete for
it. An event names the slot, the take decided on with its render key and clip, the decision, a
note, who made it, when, and from where (CLI, the Prefect UI form, a promote). Events are only
ever appended: the table is the history, and a slot's state is its newest event.

    approved            the take's clip is signed off: reruns keep it (pinned), GC keeps it
    changes_requested   the note says what to change; the slot awaits a new take
    rejected            no take of this slot goes out
    forced              an approved take was rendered again on purpose (`--force-approved`):
                        the pin is lifted and the slot awaits a decision again
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, write_deltalake

from .delta import DeltaRef, commit_metadata
from .ids import InvalidId, validate_id, validate_sha256
from .receipts import RENDERED
from .redact import scrub
from .root import Root

APPROVALS_TABLE = "index/approvals"
APPROVED, CHANGES_REQUESTED, REJECTED, FORCED = "approved", "changes_requested", "rejected", "forced"
DECISIONS = (APPROVED, CHANGES_REQUESTED, REJECTED, FORCED)
MAX_NOTE = 2000

APPROVAL_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("campaign_id", pa.string()), ("shot_id", pa.string()), ("slot", pa.string()),
    ("variant", pa.string()), ("take", pa.int64()), ("render_key", pa.string()), ("blob_uri", pa.string()),
    ("sha256", pa.string()), ("decision", pa.string()), ("note", pa.string()), ("who", pa.string()),
    ("at", pa.timestamp("us", tz="UTC")), ("source", pa.string()), ("forced", pa.bool_()),
    ("campaign_version", pa.int64()), ("run_id", pa.string()),
])

_VARIANT = re.compile(r"^(?P<slot>.+)-t(?P<take>\d+)(?P<preview>-preview)?$")


class InvalidDecision(ValueError):
    """A decision that cannot be recorded; the message is one line naming what and why."""


def slot_of(variant: str) -> tuple[str, int, bool]:
    """(slot, take, is a preview) of a variant id: `en-16x9-t2-preview` -> (`en-16x9`, 2, True)."""
    m = _VARIANT.match(variant)
    if not m:
        raise InvalidId("variant", variant, "is not <language>-<aspect>-t<take>[-preview]")
    return m.group("slot"), int(m.group("take")), bool(m.group("preview"))


def review_slots(entries: Iterable[dict]) -> dict[tuple[str, str], dict[int, dict]]:
    """{(shot, slot): {take: the version entry to decide on}}; a take's finished clip (plain or
    promoted) stands for it over its preview."""
    slots: dict[tuple[str, str], dict[int, dict]] = {}
    for entry in entries:
        slot, take, preview = slot_of(entry["variant"])
        takes = slots.setdefault((entry["shot_id"], slot), {})
        if take not in takes or (slot_of(takes[take]["variant"])[2] and not preview):
            takes[take] = entry
    return slots


def decision_event(campaign_id: str, version: dict, shot_id: str, slot: str, decision: str, *,
                   take: int | None = None, note: str | None = None, who: str, source: str,
                   run_id: str | None = None) -> dict[str, Any]:
    """The event for a decision on a published campaign version, or InvalidDecision saying why
    not (unknown shot or slot, a take the version does not have, approving a failed render)."""
    if decision not in (APPROVED, CHANGES_REQUESTED, REJECTED):
        raise InvalidDecision(f"decision: {decision!r} is not one of approved, changes_requested, rejected")
    slots = review_slots(version["entries"])
    number = version["version"]
    shots = sorted({shot for shot, _ in slots})
    if shot_id not in shots:
        raise InvalidDecision(f"shot {shot_id!r}: not in {campaign_id} version {number} "
                              f"(shots: {', '.join(shots) or 'none'})")
    takes = slots.get((shot_id, slot))
    if takes is None:
        known = sorted(s for shot, s in slots if shot == shot_id)
        raise InvalidDecision(f"shot {shot_id}: no variant {slot!r} in {campaign_id} version {number} "
                              f"(variants: {', '.join(known)})")
    if decision == APPROVED and take is None:
        raise InvalidDecision(f"{shot_id}/{slot}: approving needs --take (takes: {', '.join(map(str, sorted(takes)))})")
    if decision == CHANGES_REQUESTED and not (note or "").strip():
        raise InvalidDecision(f"{shot_id}/{slot}: requesting changes needs a --note saying what to change")
    entry = None
    if take is not None:
        entry = takes.get(take)
        if entry is None:
            raise InvalidDecision(f"{shot_id}/{slot}: no take {take} in {campaign_id} version {number} "
                                  f"(takes: {', '.join(map(str, sorted(takes)))})")
        if decision == APPROVED and entry.get("status") not in RENDERED:
            raise InvalidDecision(f"{shot_id}/{entry['variant']}: cannot approve a render that "
                                  f"{entry.get('status', 'failed')} ({entry.get('error_class') or 'no clip'})")
        if decision == APPROVED and entry.get("status") != "ok":
            raise InvalidDecision(f"{shot_id}/{entry['variant']}: cannot approve a {entry['status']} render "
                                  f"(rendered at {entry.get('rendered_resolution')}, asked {entry.get('resolution')})")
    return new_event(campaign_id, shot_id, slot, decision, entry=entry, take=take, note=note, who=who,
                     source=source, campaign_version=number, run_id=run_id)


def new_event(campaign_id: str, shot_id: str, slot: str, decision: str, *, entry: dict | None, take: int | None,
              note: str | None, who: str, source: str, campaign_version: int | None, run_id: str | None = None,
              forced: bool = False) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()), "campaign_id": campaign_id, "shot_id": shot_id, "slot": slot,
        "variant": entry["variant"] if entry else None, "take": take,
        "render_key": entry["render_key"] if entry else None,
        "blob_uri": entry.get("blob_uri") if entry else None, "sha256": entry.get("sha256") if entry else None,
        "decision": decision, "note": note, "who": who, "at": datetime.now(timezone.utc), "source": source,
        "forced": forced, "campaign_version": campaign_version, "run_id": run_id,
    }


def _validated(event: dict) -> dict:
    e = {name: event.get(name) for name in APPROVAL_SCHEMA.names}
    e["campaign_id"] = validate_id(e["campaign_id"], "campaign_id")
    e["shot_id"] = validate_id(e["shot_id"], "shot_id")
    e["slot"] = validate_id(e["slot"], "slot")
    if e["decision"] not in DECISIONS:
        raise InvalidId("decision", e["decision"], f"must be one of {', '.join(DECISIONS)}")
    if e["variant"] is not None:
        e["variant"] = validate_id(e["variant"], "variant")
    if e["render_key"] is not None:
        e["render_key"] = validate_sha256(e["render_key"], "render_key")
    if e["decision"] == APPROVED and (e["render_key"] is None or e["blob_uri"] is None):
        raise InvalidId("render_key", None, "an approval names the render it approves")
    for name in ("note", "who", "source"):
        if e[name] is not None:
            e[name] = scrub(str(e[name]))[:MAX_NOTE]
    if not e["who"]:
        raise InvalidId("who", e["who"], "a decision is made by someone")
    e["forced"] = bool(e["forced"])
    return e


@dataclass(frozen=True)
class SlotState:
    """A slot's newest event, and its approved take while that is the newest decision."""

    campaign_id: str
    shot_id: str
    slot: str
    latest: dict

    @property
    def decision(self) -> str:
        return self.latest["decision"]

    @property
    def approved(self) -> dict | None:
        return self.latest if self.decision == APPROVED else None


def review_rows(store, campaign_id: str, number: int | None = None) -> tuple[int, list[dict[str, Any]]]:
    """(version number, one row per shot and language/aspect: its takes and its newest decision)."""
    version = store.versions.read(campaign_id, number)
    state = store.approvals.state(campaign_id)
    rows = []
    for (shot, slot), takes in sorted(review_slots(version["entries"]).items()):
        decided = state.get((shot, slot))
        latest = decided.latest if decided else {}
        rows.append({
            "shot_id": shot, "slot": slot,
            "takes": [{"take": t, "variant": e["variant"], "status": e["status"], "preview": slot_of(e["variant"])[2],
                       "blob_uri": e.get("blob_uri"), "poster_uri": e.get("poster_uri"), "qc_status": e.get("qc_status")}
                      for t, e in sorted(takes.items())],
            "decision": latest.get("decision"), "take": latest.get("take"), "who": latest.get("who"),
            "note": latest.get("note"),
        })
    return version["version"], rows


class Approvals:
    def __init__(self, root: Root):
        self.table = DeltaRef(root, APPROVALS_TABLE, APPROVAL_SCHEMA)

    def record(self, events: list[dict]) -> list[dict]:
        """Append decision events (one commit); returns them as stored."""
        rows = [_validated(e) for e in events]
        if not rows:
            return []
        source = pa.Table.from_pylist(rows, schema=APPROVAL_SCHEMA)
        props = CommitProperties(custom_metadata=commit_metadata(
            "record_decisions", {"events": len(rows), "campaigns": ",".join(sorted({r["campaign_id"] for r in rows}))}))

        def append(dt: DeltaTable) -> None:
            write_deltalake(dt, source, mode="append", commit_properties=props)

        self.table.write(append)
        return rows

    def events(self, campaign_id: str | None = None) -> list[dict]:
        """Every event (of one campaign), oldest first."""
        table = self.table.read_table()
        rows = [] if table is None else table.to_pylist()
        if campaign_id is not None:
            campaign_id = validate_id(campaign_id, "campaign_id")
            rows = [r for r in rows if r["campaign_id"] == campaign_id]
        return sorted(rows, key=lambda r: (r["at"], r["event_id"]))

    def state(self, campaign_id: str) -> dict[tuple[str, str], SlotState]:
        """{(shot, slot): its state} for every slot with at least one event."""
        out: dict[tuple[str, str], SlotState] = {}
        for event in self.events(campaign_id):
            out[(event["shot_id"], event["slot"])] = SlotState(campaign_id, event["shot_id"], event["slot"], event)
        return out

    def referenced_uris(self) -> set[str]:
        """Every clip an approval ever named (GC keeps them, superseded approvals included)."""
        table = self.table.read_table(["decision", "blob_uri"])
        if table is None:
            return set()
        return {r["blob_uri"] for r in table.to_pylist() if r["decision"] == APPROVED and r["blob_uri"]}
