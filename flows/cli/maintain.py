"""`horse maintain`: run catalog maintenance now (the flow the maintenance deployment schedules)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from flows.cli.command import EXIT_FAILED, ConfigOpt, JsonOpt, Outcome, StoreOpt, console, err_console, run_command

app = typer.Typer()


@app.command()
def maintain(dry_run: Annotated[bool, typer.Option("--dry-run", help="only report what would be done")] = False,
             as_json: JsonOpt = False, config: ConfigOpt = None, store: StoreOpt = None) -> None:
    """Compact and vacuum the catalog's Delta tables within the retention, then delete blobs that
    nothing references and that are older than the grace period."""

    def body(settings) -> Outcome:
        from flows.maintenance import catalog_maintenance

        state = catalog_maintenance(store_url=store, config_file=str(config) if config else None, dry_run=dry_run,
                                    return_state=True)
        if not state.is_completed():
            try:
                state.result()
                error = f"maintenance ended {state.name}"
            except Exception as exc:  # noqa: BLE001 - summarised; the traceback is in the flow run's log
                error = f"{type(exc).__name__}: {exc}"
            return Outcome({"ok": False, "error": error},
                           lambda: err_console.print(f"[red]maintenance failed:[/red] {error}", highlight=False),
                           EXIT_FAILED)
        document = state.result()
        return Outcome({"ok": True, **document}, lambda: show(document))

    run_command(as_json, body, config, store)


def show(document: dict) -> None:
    would = "would " if document["dry_run"] else ""
    table = Table(title=f"catalog maintenance{' (dry run)' if document['dry_run'] else ''}", header_style="bold")
    for column in ("table", "data files", f"{would}compact", f"{would}vacuum", "MB stored", "kept versions"):
        table.add_column(column)
    for t in document["tables"]:
        table.add_row(t["table"], f"{t['files_before']} -> {t['files_after']}", str(t["compacted_files"]),
                      str(t["vacuumed_files"]), f"{t['stored_before'] / 1e6:.1f} -> {t['stored_after'] / 1e6:.1f}",
                      str(len(t["kept_versions"])))
    console.print(table)
    gc = document["gc"]
    console.print(f"blobs: {gc['scanned']} scanned, {gc['referenced']} referenced, {gc['young']} in the grace "
                  f"period, [bold]{gc['deleted']} {would}{'be ' if would else ''}deleted[/bold] ({gc['bytes'] / 1e6:.1f} MB)")
    for uri in gc["deleted_uris"][:20]:
        console.print(f"  {uri}", highlight=False)
