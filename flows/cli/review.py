"""`horse review`, `horse approve`, `horse request-changes`, `horse reject`, `horse deliver`:
decisions on record (catalog.approvals) and the export of approved masters (flows.deliver)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from flows.cli.command import ConfigOpt, InvalidInput, JsonOpt, Outcome, StoreOpt, console, invalid_input, run_command

app = typer.Typer()
CampaignArg = Annotated[str, typer.Argument(help="campaign id")]
ShotArg = Annotated[str, typer.Argument(help="shot id")]
VariantArg = Annotated[str, typer.Argument(help="language-aspect (en-16x9), or a take's variant (en-16x9-t2)")]
VersionOpt = Annotated[Optional[int], typer.Option("--version", min=1, help="campaign version (default: latest)")]
NoteOpt = Annotated[Optional[str], typer.Option("--note", help="what to change, or why")]
WhoOpt = Annotated[Optional[str], typer.Option("--who", help="who decides (default: review.user, else the login name)")]


def _decide(campaign: str, shot: str, variant: str, decision: str, take: int | None, note: str | None,
            who: str | None, version: int | None, as_json: bool, config, store) -> None:
    def body(settings) -> Outcome:
        from catalog import InvalidDecision, InvalidId, Store, decision_event, slot_of
        from catalog.versions import VersionNotFound
        from flows.settings import reviewer_name

        with invalid_input(InvalidDecision, InvalidId, VersionNotFound):
            slot, chosen = variant, take
            try:  # a take's variant (en-16x9-t2): its slot and take
                slot, chosen, _ = slot_of(variant)
            except InvalidId:  # a slot (en-16x9): the take comes from --take
                pass
            else:
                if take is not None and take != chosen:
                    raise InvalidInput(f"{variant}: --take {take} names another take")
            catalog = Store(settings.store_url, settings.storage_options)
            body = catalog.versions.read(campaign, version)
            event = decision_event(campaign, body, shot, slot, decision, take=chosen, note=note,
                                   who=who or settings.review.user or reviewer_name(), source="cli")
            (stored,) = catalog.approvals.record([event])
        document = {"ok": True, "event": {**stored, "at": stored["at"].isoformat()}}
        take_text = f" take {chosen}" if chosen else ""
        return Outcome(document, lambda: console.print(
            f"{decision.replace('_', ' ')}: {campaign} {shot}/{slot}{take_text} by {stored['who']}", highlight=False))

    run_command(as_json, body, config, store)


@app.command()
def approve(campaign: CampaignArg, shot: ShotArg, variant: VariantArg,
            take: Annotated[Optional[int], typer.Option("--take", min=1, help="the take approved")] = None,
            note: NoteOpt = None, who: WhoOpt = None, version: VersionOpt = None, as_json: JsonOpt = False,
            config: ConfigOpt = None, store: StoreOpt = None) -> None:
    """Approve a take: reruns keep it as it is, GC keeps it, `horse deliver` ships it."""
    _decide(campaign, shot, variant, "approved", take, note, who, version, as_json, config, store)


@app.command("request-changes")
def request_changes(campaign: CampaignArg, shot: ShotArg, variant: VariantArg,
                    note: Annotated[str, typer.Option("--note", help="what to change")],
                    who: WhoOpt = None, version: VersionOpt = None, as_json: JsonOpt = False,
                    config: ConfigOpt = None, store: StoreOpt = None) -> None:
    """Ask for changes on a shot's language/aspect, with a note saying what."""
    _decide(campaign, shot, variant, "changes_requested", None, note, who, version, as_json, config, store)


@app.command()
def reject(campaign: CampaignArg, shot: ShotArg, variant: VariantArg, note: NoteOpt = None, who: WhoOpt = None,
           version: VersionOpt = None, as_json: JsonOpt = False, config: ConfigOpt = None,
           store: StoreOpt = None) -> None:
    """Reject a shot's language/aspect: none of its takes goes out."""
    _decide(campaign, shot, variant, "rejected", None, note, who, version, as_json, config, store)


@app.command()
def review(campaign: CampaignArg, version: VersionOpt = None, as_json: JsonOpt = False, config: ConfigOpt = None,
           store: StoreOpt = None) -> None:
    """What awaits a decision, and what was decided, per shot and language/aspect."""

    def body(settings) -> Outcome:
        from catalog import InvalidId, Store
        from catalog.versions import VersionNotFound
        from catalog.approvals import review_rows

        with invalid_input(InvalidId, VersionNotFound):
            catalog = Store(settings.store_url, settings.storage_options)
            number, rows = review_rows(catalog, campaign, version)
        document = {"ok": True, "campaign_id": campaign, "version": number, "slots": rows,
                    "awaiting": sum(1 for r in rows if r["decision"] is None)}
        return Outcome(document, lambda: show_review(document))

    run_command(as_json, body, config, store)


def show_review(document: dict[str, Any]) -> None:
    table = Table(title=f"{document['campaign_id']} version {document['version']}", header_style="bold")
    for column in ("shot", "variant", "takes", "decision", "by", "note"):
        table.add_column(column, overflow="fold")
    for r in document["slots"]:
        takes = ", ".join(f"t{t['take']} {t['status']}{' (preview)' if t['preview'] else ''}" for t in r["takes"])
        decision = r["decision"] or "[yellow]awaiting[/yellow]"
        if r["decision"] == "approved":
            decision = f"approved t{r['take']}"
        table.add_row(r["shot_id"], r["slot"], takes, decision, r["who"] or "", r["note"] or "")
    console.print(table)
    console.print(f"{document['awaiting']} awaiting a decision", highlight=False)


@app.command()
def deliver(
    campaign: CampaignArg,
    destination: Annotated[str, typer.Option("--destination", help="destination whose masters are delivered")],
    out: Annotated[str, typer.Option("-o", "--out", help="folder or URL the delivery goes under")],
    version: VersionOpt = None,
    verify: Annotated[bool, typer.Option("--verify", help="re-hash every delivered file against SHA256SUMS")] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Export the approved masters: named files, SHA256SUMS, an OpenTimelineIO timeline per language x aspect."""

    def body(settings) -> Outcome:
        from catalog import InvalidId, Store
        from catalog.deliverables import DeliveryError
        from flows.deliver import deliver as export

        with invalid_input(DeliveryError, InvalidId):
            report = export(Store(settings.store_url, settings.storage_options), campaign, destination, out,
                            version=version, verify=verify)
        document = report.as_dict()
        return Outcome(document, lambda: show_delivery(document))

    run_command(as_json, body, config, store)


def show_delivery(d: dict[str, Any]) -> None:
    console.print(f"delivered {d['campaign_id']} version {d['version']} for {d['destination']} to {d['folder']}: "
                  f"{len(d['copied'])} copied, {len(d['unchanged'])} unchanged, timelines {', '.join(d['timelines'])}",
                  highlight=False)
    for name, checks in d["qc_failed"].items():
        console.print(f"[yellow]QC failed[/yellow] {name}: {', '.join(checks)}", highlight=False)
    for name, why in d["edl_skipped"].items():
        console.print(f"[yellow]no EDL[/yellow] {name}: {why}", highlight=False)
    if d["verified"] is not None:
        console.print(f"verified {d['verified']} files" + (f", [red]{len(d['mismatched'])} mismatched[/red]: "
                                                           + "; ".join(d["mismatched"]) if d["mismatched"] else ""))
