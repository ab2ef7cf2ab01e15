"""`horse versions` and `horse show`: what the catalog published for a campaign."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from flows.cli.command import ConfigOpt, InvalidInput, JsonOpt, Outcome, StoreOpt, console, invalid_input, run_command

app = typer.Typer()
CampaignArg = Annotated[str, typer.Argument(help="campaign id")]


@app.command()
def versions(campaign: CampaignArg, as_json: JsonOpt = False, config: ConfigOpt = None, store: StoreOpt = None) -> None:
    """List a campaign's published versions."""

    def body(settings) -> Outcome:
        from catalog import InvalidId, Store

        with invalid_input(InvalidId):
            infos = Store(settings.store_url, settings.storage_options).versions.list(campaign)
        if not infos:
            raise InvalidInput(f"campaign {campaign!r} has no published versions in {settings.store_url}")
        rows = [{"version": i.number, "created_at": i.created_at.isoformat(), "entries": i.entries, "ok": i.ok,
                 "failed": i.failed, "run_id": i.run_id, "model_fingerprint": i.model_fingerprint, "uri": i.uri}
                for i in infos]

        def show() -> None:
            table = Table(title=f"{campaign} versions", header_style="bold")
            for column in ("version", "created (UTC)", "clips", "ok", "failed", "run"):
                table.add_column(column)
            for r in rows:
                table.add_row(str(r["version"]), r["created_at"][:19], str(r["entries"]), str(r["ok"]),
                              str(r["failed"]), (r["run_id"] or "")[:8])
            console.print(table)

        return Outcome({"ok": True, "campaign_id": campaign, "versions": rows}, show)

    run_command(as_json, body, config, store)


@app.command()
def show(campaign: CampaignArg,
         version: Annotated[Optional[int], typer.Option("--version", min=1, help="default: latest")] = None,
         as_json: JsonOpt = False, config: ConfigOpt = None, store: StoreOpt = None) -> None:
    """List the files of a campaign version (latest by default)."""

    def body(settings) -> Outcome:
        from catalog import InvalidId, Store, VersionNotFound

        with invalid_input(InvalidId, VersionNotFound):
            document = Store(settings.store_url, settings.storage_options).versions.read(campaign, version)

        def show_version() -> None:
            console.print(f"[bold]{campaign}[/bold] version {document['version']} ({document['created_at']}), "
                          f"manifest sha256 {str(document.get('manifest_sha256'))[:12]}")
            show_entries(document["entries"])

        return Outcome({"ok": True, **document}, show_version)

    run_command(as_json, body, config, store)


def show_entries(entries: list[dict], title: str | None = None) -> None:
    """A version's entries as a table: shot, variant, status and its file (or why it failed)."""
    table = Table(title=title, header_style="bold")
    for column in ("shot", "variant", "status", "file"):
        table.add_column(column, overflow="fold")
    for e in entries:
        table.add_row(e["shot_id"], e["variant"], e["status"], e.get("blob_uri") or e.get("error_class") or "")
    console.print(table)
