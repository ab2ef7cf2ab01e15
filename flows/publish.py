"""Publishing a run: every planned variant of a campaign, with its file or its failure, becomes the
campaign's next immutable version, with a contact sheet of its posters."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable
from importlib.metadata import PackageNotFoundError, version as package_version

from catalog import Store
from catalog.approvals import slot_of
from catalog.store import approval_field
from flows.collect import NOT_RENDERED_FIELDS
from flows.plan import PROMOTED, Plan, PlannedJob
from flows.routing import version_fields
from horse_actors.dialogue_gate import unchecked
from media import contact_sheet




@dataclass(frozen=True)
class PublishedVersion:
    campaign_id: str
    number: int
    uri: str
    contact_sheet_uri: str | None = None
    contact_sheet: bytes | None = None  # the JPEG itself, inlined in the run summary


def code_version() -> str:
    try:
        return f"horse {package_version('horse')}"
    except PackageNotFoundError:  # running from a source tree without installing
        return "horse (source)"


def version_entries(plan: Plan, collected: Callable[[str], dict | None],
                    qc: dict[str, dict] | None = None, dialogue: dict[str, dict] | None = None) -> dict[str, list[dict]]:
    """Version entries per campaign: every planned variant with its file or its failure
    (`collected`: a render key's `collected_fields` from this run, None if the run did not get to
    it), its delivery QC and its dialogue gate result from the QC index (`qc`: Store.qc.results of
    the run's keys, `dialogue`: Store.qc.dialogue_results)."""
    per_campaign: dict[str, list[dict]] = {}
    for job in plan.jobs:
        entry = job.entry() | version_fields(job)
        cached = plan.cached.get(job.render_key)
        if cached is not None:
            entry |= {"status": "ok", "blob_uri": cached["blob_uri"], "sha256": cached["sha256"], "poster_uri": cached.get("poster_uri"),
                      "rendered_seed": cached.get("rendered_seed"), "qc_status": cached.get("qc_status"),
                      **linked_from_record(cached, job)}
        else:  # rendered now, or not rendered: cancelled, or stopped at a budget, before it started
            entry |= collected(job.render_key) or NOT_RENDERED_FIELDS
        if (qc or {}).get(job.render_key):
            entry["qc"] = qc[job.render_key]
        # What the gate heard (from index/qc), or why this run could not hear the line (the plan's check).
        heard = (dialogue or {}).get(job.render_key) or unchecked(job.dialogue)
        if heard and entry["status"] != "failed":
            entry["dialogue"], entry["dialogue_status"] = heard, heard["status"]
        per_campaign.setdefault(job.campaign_id, []).append(entry)
    for entry in plan.kept:  # approved: exactly as signed off, whatever the manifest says now
        per_campaign.setdefault(entry["campaign_id"], []).append(entry)
    return per_campaign


def linked_from_record(row: dict, job: PlannedJob) -> dict:
    """The preview/promote links (`flows.collect.staged`) of a render the catalog already has, from
    its index row or receipt (they live in its `extra` fields); a promoted take that was already
    rendered names its preview all the same."""
    extra = row.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra)
    links = {k: extra[k] for k in ("stage_key", "promoted_from", "base_rerendered") if k in extra}
    if job.role == PROMOTED and "promoted_from" not in links:
        links["promoted_from"] = job.promoted_from
    return links


def merge_with_previous(store: Store, campaign_id: str, entries: list[dict]) -> list[dict]:
    """A backfill adds variants: the new version keeps every variant of the previous one."""
    latest = store.versions.latest(campaign_id)
    if latest is None:
        return entries
    previous = store.versions.read(campaign_id, latest)["entries"]
    merged = {(e["shot_id"], e["variant"]): e for e in previous}
    merged.update({(e["shot_id"], e["variant"]): e for e in entries})
    return list(merged.values())


def with_review_state(store: Store, campaign_id: str, entries: list[dict]) -> list[dict]:
    """Each entry with its slot's review state when the version is published (`approval`: the
    newest decision on its shot/language/aspect, `this_take`: whether it is about this variant;
    None: nothing decided yet). The live state is `horse review`."""
    state = store.approvals.state(campaign_id)
    out = []
    for entry in entries:
        slot, _, _ = slot_of(entry["variant"])
        decided = state.get((entry["shot_id"], slot))
        approval = None
        if decided is not None:
            approval = {**approval_field(decided.latest), "this_take": decided.latest["variant"] == entry["variant"]}
        out.append({**entry, "approval": approval})
    return out


def publish_contact_sheet(store: Store, entries: list[dict]) -> tuple[str | None, bytes | None]:
    posters = []
    for entry in entries[:48]:
        if entry.get("status") == "ok" and entry.get("poster_uri"):
            with store.open_blob(entry["poster_uri"]) as f:
                posters.append((f"{entry['shot_id']}\n{entry['variant']}", f.read()))
    if not posters:
        return None, None
    jpeg = contact_sheet(posters)
    return store.put_blob(jpeg, ext="jpg").uri, jpeg


def publish_version(store: Store, campaign_id: str, entries: list[dict], *, manifest_uri: str, manifest_sha256: str,
                    model_fingerprint: str, run_id: str, merge_previous: bool) -> PublishedVersion:
    if merge_previous:
        entries = merge_with_previous(store, campaign_id, entries)
    entries = with_review_state(store, campaign_id, entries)
    sheet_uri, sheet = publish_contact_sheet(store, entries)  # first, so the version can name it
    number = store.versions.publish(
        campaign_id, entries, manifest_uri=manifest_uri, manifest_sha256=manifest_sha256,
        model_fingerprint=model_fingerprint, code_version=code_version(), run_id=run_id, contact_sheet_uri=sheet_uri,
    )
    return PublishedVersion(campaign_id, number, store.version_uri(campaign_id, number), sheet_uri, sheet)
