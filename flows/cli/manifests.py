"""`horse manifest validate` and `horse manifest build`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from flows.cli.command import ConfigOpt, JsonOpt, Outcome, StoreOpt, console, invalid_input, run_command

app = typer.Typer(help="Validate manifests; build them from CSV/YAML briefs.", no_args_is_help=True)


@app.command("validate")
def validate(file: Annotated[str, typer.Argument(help="Parquet manifest (path or URL)")], as_json: JsonOpt = False,
             config: ConfigOpt = None, store: StoreOpt = None) -> None:
    """Check every row; print each problem with its row, column and reason (adapter names: those
    registered in the store)."""

    def body(settings) -> Outcome:
        from catalog import Store
        from flows.destinations import load_destinations
        from flows.manifest import ManifestError, read_manifest

        destinations = load_destinations(settings.render.destination_folders)
        adapters = Store(settings.store_url, settings.storage_options).adapters.names()
        with invalid_input(ManifestError):
            manifest = read_manifest(file, settings.storage_options or None, settings.render.input_roots, destinations,
                                     settings.routing.backends, adapters)

        def show() -> None:
            console.print(f"{manifest.uri}: {manifest.rows} rows, [green]{len(manifest.shots)} valid[/green], "
                          f"campaigns {', '.join(manifest.campaign_ids) or '-'}")
            show_row_errors(manifest.errors)

        return Outcome({"ok": not manifest.errors, **manifest_document(manifest)}, show)

    run_command(as_json, body, config, store)


@app.command("build")
def build(
    brief: Annotated[Path, typer.Argument(help="CSV or YAML brief", exists=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Parquet file to write")],
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Convert a CSV/YAML brief into a Parquet manifest (valid rows only; problems are listed)."""

    def body(settings) -> Outcome:
        from catalog import Store
        from flows.briefs import build_manifest
        from flows.destinations import load_destinations
        from flows.manifest import ManifestError

        destinations = load_destinations(settings.render.destination_folders)
        adapters = Store(settings.store_url, settings.storage_options).adapters.names()
        with invalid_input(ManifestError, OSError):
            manifest, path = build_manifest(brief, output, settings.render.input_roots, destinations, adapters)

        def show() -> None:
            console.print(f"wrote {path}: {len(manifest.shots)} shots from {manifest.rows} rows")
            show_row_errors(manifest.errors)

        return Outcome({"ok": not manifest.errors, "output": str(path), **manifest_document(manifest)}, show)

    run_command(as_json, body, config, store)


def manifest_document(manifest) -> dict[str, Any]:
    return {
        "uri": manifest.uri,
        "sha256": manifest.sha256,
        "rows": manifest.rows,
        "valid": len(manifest.shots),
        "campaigns": manifest.campaign_ids,
        "errors": [{"row": e.row, "shot_id": e.shot_id, "column": e.column, "reason": e.reason} for e in manifest.errors],
    }


def show_row_errors(errors) -> None:
    if not errors:
        return
    table = Table(title="rows skipped", header_style="bold red")
    for column in ("row", "shot", "column", "reason"):
        table.add_column(column)
    for e in errors:
        table.add_row(str(e.row), e.shot_id or "", e.column, e.reason)
    console.print(table)
