"""Review in the Prefect UI: a flow step that shows the takes of a campaign version (contact sheet,
posters and files per take, delivery QC) as artifacts and pauses for a typed form (Prefect run
input): per shot and language/aspect, approve a take, request changes with a note, or reject.

On submit the decisions go on record (catalog.approvals, source "prefect-ui") and the approved
preview takes are promoted (flows.promote), which makes their destination masters; the promoted
clip carries its preview's approval. When the timeout comes first, the run submits its own form
with nothing decided and ends cleanly, the review still open: the same decisions can be made
later with `horse approve` and friends.
"""

from __future__ import annotations

import base64
import threading
from typing import Any, Literal

from prefect import flow, get_run_logger, pause_flow_run
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.input import RunInput
from pydantic import Field, create_model

from catalog import Store, decision_event, slot_of
from catalog.approvals import review_rows
from catalog.approvals import APPROVED, CHANGES_REQUESTED, REJECTED, new_event
from flows.report import artifact_key
from flows.settings import HorseSettings

AWAITING, CHANGES, REJECT = "awaiting", "request changes", "reject"
PAUSE_MARGIN_S = 300  # Prefect's own pause deadline, past ours: the run answers its form before it
UI_SOURCE = "prefect-ui"


def review_form(rows: list[dict[str, Any]]) -> type[RunInput]:
    """The typed form: a choice and a note per shot and language/aspect, and who is deciding.
    Fields are `s<i>` / `s<i>_note` (titled with the shot and variant) so any id makes a field."""
    fields: dict[str, Any] = {"reviewer": (str, Field("", title="Reviewer", description="your name, on record"))}
    for i, row in enumerate(rows):
        approvable = [f"approve t{t['take']}" for t in row["takes"] if t["status"] == "ok"]
        choices = Literal[tuple([AWAITING, *approvable, CHANGES, REJECT])]  # type: ignore[misc]
        label = f"{row['shot_id']} · {row['slot']}"
        takes = ", ".join(f"t{t['take']} {t['status']}" for t in row["takes"])
        fields[f"s{i}"] = (choices, Field(AWAITING, title=label, description=f"takes: {takes}"))
        fields[f"s{i}_note"] = (str, Field("", title=f"{label} note", description="what to change, or why"))
    return create_model("ReviewForm", __base__=RunInput, **fields)


def decisions_from_form(campaign_id: str, version: dict, rows: list[dict], form: RunInput,
                        who: str, run_id: str | None) -> list[dict]:
    """The decision events a submitted form makes (slots left `awaiting` make none)."""
    events = []
    for i, row in enumerate(rows):
        choice, note = getattr(form, f"s{i}"), getattr(form, f"s{i}_note") or None
        if choice == AWAITING:
            continue
        decision, take = ((APPROVED, int(choice.split("t")[-1])) if choice.startswith("approve")
                          else (CHANGES_REQUESTED if choice == CHANGES else REJECTED, None))
        events.append(decision_event(campaign_id, version, row["shot_id"], row["slot"], decision, take=take,
                                     note=note, who=who, source=UI_SOURCE, run_id=run_id))
    return events


def carry_approvals(store: Store, campaign_id: str, number: int, run_id: str | None = None) -> list[dict]:
    """Promoted clips of version `number` whose preview is the approved take of its slot are
    approved too (same person, source "promote"): the finished clip is what was signed off."""
    state = store.approvals.state(campaign_id)
    events = []
    for entry in store.versions.read(campaign_id, number)["entries"]:
        origin = entry.get("promoted_from") or {}
        if entry.get("role") != "promoted" or entry.get("status") != "ok" or not origin:
            continue
        slot, take, _ = slot_of(entry["variant"])
        approved = (state.get((entry["shot_id"], slot)) or None)
        if approved is None or approved.approved is None or approved.latest["render_key"] != origin.get("render_key"):
            continue
        events.append(new_event(campaign_id, entry["shot_id"], slot, APPROVED, entry=entry, take=take,
                                note=f"promoted from approved preview {origin.get('variant')}",
                                who=approved.latest["who"], source="promote", campaign_version=number, run_id=run_id))
    return store.approvals.record(events)


def publish_review_artifacts(store: Store, campaign_id: str, version: dict, rows: list[dict]) -> str:
    """One markdown artifact: the contact sheet, then per shot and variant its takes with poster,
    file and QC. Images are inlined so the UI shows them without access to the store."""
    lines = [f"# Review {campaign_id} version {version['version']}", ""]
    sheet = version.get("contact_sheet_uri")
    if sheet:
        with store.open_blob(sheet) as f:
            lines += ["## Contact sheet", "", f"![contact sheet](data:image/jpeg;base64,{base64.b64encode(f.read()).decode()})", ""]
    lines += ["## Takes", "", "| shot | variant | take | status | QC | poster | file |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        for t in row["takes"]:
            poster = ""
            if t["poster_uri"]:
                with store.open_blob(t["poster_uri"]) as f:
                    poster = f"![t{t['take']}](data:image/jpeg;base64,{base64.b64encode(f.read()).decode()})"
            lines.append(f"| {row['shot_id']} | {row['slot']} | t{t['take']}{' preview' if t['preview'] else ''} "
                         f"| {t['status']} | {t['qc_status'] or ''} | {poster} | `{t['blob_uri'] or ''}` |")
    key = artifact_key(campaign_id, "review")
    create_markdown_artifact("\n".join(lines), key=key, description=f"Takes to review in {campaign_id}")
    return key


def _resume_undecided(flow_run_id, form_class: type[RunInput]) -> None:
    """Resume the paused run with the form as it starts (every slot awaiting), as if submitted empty."""
    from prefect.client.orchestration import get_client

    undecided = {name: field.default for name, field in form_class.model_fields.items()}
    with get_client(sync_client=True) as client:
        client.resume_flow_run(flow_run_id, run_input=undecided)  # a no-op if a person answered first


def review_step(campaign_id: str, number: int, settings: HorseSettings, *, promote_to: str = "1080p",
                timeout_s: int | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Show, pause for the form, record, promote. Call inside a flow run."""
    from flows.promote import run_promote

    log = get_run_logger()
    store = Store(settings.store_url, settings.storage_options)
    version = store.versions.read(campaign_id, number)
    _, rows = review_rows(store, campaign_id, number)
    publish_review_artifacts(store, campaign_id, version, rows)
    timeout = int(timeout_s if timeout_s is not None else settings.review.timeout_hours * 3600)
    form_class = review_form(rows)
    # Prefect fails a run whose pause runs out, whatever it does next. So the run answers its own
    # form (nothing decided) when our timeout comes, well inside the pause's, and ends cleanly.
    expiry = threading.Timer(timeout, _resume_undecided, (FlowRunContext.get().flow_run.id, form_class))
    expiry.daemon = True
    expiry.start()
    try:
        form = pause_flow_run(wait_for_input=form_class, timeout=timeout + PAUSE_MARGIN_S,
                              poll_interval=min(settings.review.poll_seconds, max(1, timeout)),
                              key=artifact_key("review", campaign_id, str(number)))
    except FlowPauseTimeout:  # the run could not answer its own form: the run fails, the review stays open
        log.error("review of %s version %d was never resumed; it stays open (horse review %s)",
                  campaign_id, number, campaign_id)
        raise
    finally:
        expiry.cancel()
    who = form.reviewer.strip() or UI_SOURCE
    events = store.approvals.record(decisions_from_form(campaign_id, version, rows, form, who, run_id))
    if not events:
        log.warning("review of %s version %d: nothing decided%s; it stays open (horse review %s)", campaign_id,
                    number, f" within {timeout} s" if expiry.finished.is_set() else "", campaign_id)
        return {"status": "open", "campaign_id": campaign_id, "version": number, "decisions": []}
    log.info("review of %s version %d: %d decision(s) by %s", campaign_id, number, len(events), who)
    previews = [e["variant"] for e in events if e["decision"] == APPROVED and slot_of(e["variant"])[2]]
    result: dict[str, Any] = {"status": "decided", "campaign_id": campaign_id, "version": number,
                              "decisions": [{k: e[k] for k in ("shot_id", "slot", "take", "decision", "note")}
                                            for e in events]}
    if previews:
        shots = sorted({e["shot_id"] for e in events if e["variant"] in previews})
        promoted = run_promote(campaign_id, promote_to, settings, shots, previews)  # carries the approvals
        result |= {"promoted_version": promoted["versions"][campaign_id],
                   "promoted": [e["variant"] for e in promoted["promoted"]]}
    return result


@flow(name="review-campaign", log_prints=True)
def review_campaign(campaign_id: str, version: int | None = None, promote_to: str = "1080p",
                    timeout_s: int | None = None, store_url: str | None = None, model: str | None = None,
                    config_file: str | None = None, ray_address: str | None = None) -> dict[str, Any]:
    """Review a published campaign version (default: latest) in the UI; approved previews are promoted."""
    from flows.campaign_run import current_run_id
    from flows.nightly import flow_settings

    settings = flow_settings(config_file, store_url, model, ray_address)
    number = version or Store(settings.store_url, settings.storage_options).versions.latest(campaign_id)
    if number is None:
        raise ValueError(f"campaign {campaign_id!r} has no published version")
    return review_step(campaign_id, number, settings, promote_to=promote_to, timeout_s=timeout_s,
                       run_id=current_run_id())
