"""`horse gc`: delete what the store no longer needs, by kind (clips, posters, contact sheets, stage
results, manifests, masters); `--dry-run` only says what would go."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer
from rich.table import Table

from flows.cli.command import ConfigOpt, JsonOpt, Outcome, StoreOpt, console, run_command

app = typer.Typer()


@app.command()
def gc(dry_run: Annotated[bool, typer.Option("--dry-run", help="delete nothing; show what would be deleted")] = False,
       as_json: JsonOpt = False, config: ConfigOpt = None, store: StoreOpt = None) -> None:
    """Delete what the store no longer needs; show bytes by kind (--dry-run: delete nothing).

    Files nothing refers to, older than gc.grace_hours, and stage results past their retention
    (gc.preview_latent_days for previews, gc.stage_result_hours for the rest)."""

    def body(settings) -> Outcome:
        from catalog import Retention, Store

        report = Store(settings.store_url, settings.storage_options).gc(
            grace=timedelta(hours=settings.gc.grace_hours), dry_run=dry_run,
            retention=Retention(settings.gc.preview_latent_days, settings.gc.stage_result_hours))
        document = {"ok": True, "dry_run": dry_run, "scanned": report.scanned, "referenced": report.referenced,
                    "young": report.young, "deleted_files": len(report.deleted), "deleted_bytes": report.bytes,
                    "by_kind": report.by_kind, "expired_stage_results": report.expired_stage_results,
                    "deleted": report.deleted}

        def show() -> None:
            verb = "would delete" if dry_run else "deleted"
            table = Table(title=f"{settings.store_url}{' (dry run)' if dry_run else ''}", header_style="bold")
            for column in ("kind", "files", "bytes", f"{verb} (files)", f"{verb} (bytes)"):
                table.add_column(column, justify="left" if column == "kind" else "right")
            for kind, row in sorted(report.by_kind.items()):
                table.add_row(kind, str(row["files"]), f"{row['bytes']:,}", str(row["deleted_files"]),
                              f"{row['deleted_bytes']:,}")
            console.print(table)
            console.print(f"{len(report.deleted)} files, {report.bytes:,} bytes {verb}; "
                          f"{len(report.expired_stage_results)} stage result(s) past their retention"
                          f"{'' if dry_run else ' (records deleted)'}")

        return Outcome(document, show)

    run_command(as_json, body, config, store)
