"""The `horse` command line (DESIGN.md §7).

Every command prints human output by default and exactly one JSON document with `--json`.
Exit codes: 0 all good, 1 some shots (or checks) failed, 2 invalid input or configuration.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table

from flows.settings import ConfigError, HorseSettings, load_settings

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2

app = typer.Typer(
    name="horse",
    help="Batch rendering for Happy Horse 1.0 campaigns: Prefect flows, Ray GPU actors, versioned storage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

# Options shared by every command.
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document instead of tables")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML config file (also HORSE_CONFIG)")]
StoreOpt = Annotated[Optional[str], typer.Option("--store", help="store root URL: path, file://, s3://, gs://")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="model preset (tiny, ...) or checkpoint folder")]
RayOpt = Annotated[Optional[str], typer.Option("--ray-address", help="'auto' or host:port; default: private local cluster")]


def settings_from(config: Path | None, store: str | None, model: str | None, ray_address: str | None, as_json: bool) -> HorseSettings:
    overrides: dict[str, Any] = {"store_url": store, "model": model}
    if ray_address is not None:
        overrides["ray"] = {"address": ray_address}
    try:
        settings = load_settings(config, **overrides)
    except ConfigError as exc:
        fail(str(exc), as_json, code=EXIT_INVALID)
    if settings.prefect.api_url and "PREFECT_API_URL" not in os.environ:
        # Prefect reads its settings from the environment when it is imported: commands call
        # settings_from before importing anything that imports prefect.
        os.environ["PREFECT_API_URL"] = settings.prefect.api_url
    return settings


def fail(message: str, as_json: bool, code: int = EXIT_INVALID) -> NoReturn:
    if as_json:
        emit_json({"ok": False, "error": message})
    else:
        err_console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def guarded(as_json: bool, action: Callable[[], int]) -> NoReturn:
    """Run a command body: invalid configuration exits 2, any other error 1, both with a one-line
    message instead of a traceback (HORSE_DEBUG=1 shows the traceback)."""
    try:
        code = action()
    except ConfigError as exc:
        fail(str(exc), as_json, code=EXIT_INVALID)
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as exc:
        if os.environ.get("HORSE_DEBUG"):
            raise
        fail(f"{type(exc).__name__}: {exc} (set HORSE_DEBUG=1 for the traceback)", as_json, code=EXIT_FAILED)
    raise typer.Exit(code)


@app.callback()
def _group() -> None:
    """Batch rendering for Happy Horse 1.0 campaigns."""


@app.command()
def doctor(
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    store: StoreOpt = None,
    model: ModelOpt = None,
    ray_address: RayOpt = None,
) -> None:
    """Check torch/GPU, Ray, Prefect, the video/audio encoders and the store."""
    from flows.doctor import run_checks

    settings = settings_from(config, store, model, ray_address, as_json)

    def body() -> int:
        if not as_json:
            console.print("[bold]horse doctor[/bold]: checking this machine ...")
        checks = run_checks(settings)
        ok = all(c.ok for c in checks if c.required)
        if as_json:
            emit_json({"ok": ok, "checks": [c.as_dict() for c in checks]})
        else:
            table = Table(show_header=True, header_style="bold")
            for column in ("check", "", "detail", "s"):
                table.add_column(column)
            for c in checks:
                mark = "[green]ok[/green]" if c.ok else ("[red]FAIL[/red]" if c.required else "[yellow]warn[/yellow]")
                table.add_row(c.name, mark, c.detail, f"{c.seconds:.1f}")
            console.print(table)
            console.print("[green]ready to render[/green]" if ok else "[red]not ready: see FAIL rows above[/red]")
        return EXIT_OK if ok else EXIT_FAILED

    guarded(as_json, body)


# ---- manifests ---------------------------------------------------------------------------

manifest_app = typer.Typer(help="Validate manifests; build them from CSV/YAML briefs.", no_args_is_help=True)
app.add_typer(manifest_app, name="manifest")


def _row_errors_table(errors) -> Table:
    table = Table(title="rows skipped", header_style="bold red")
    for column in ("row", "shot", "column", "reason"):
        table.add_column(column)
    for e in errors:
        table.add_row(str(e.row), e.shot_id or "", e.column, e.reason)
    return table


def _manifest_document(manifest) -> dict[str, Any]:
    return {
        "uri": manifest.uri,
        "sha256": manifest.sha256,
        "rows": manifest.rows,
        "valid": len(manifest.shots),
        "campaigns": manifest.campaign_ids,
        "errors": [{"row": e.row, "shot_id": e.shot_id, "column": e.column, "reason": e.reason} for e in manifest.errors],
    }


@manifest_app.command("validate")
def manifest_validate(file: Annotated[str, typer.Argument(help="Parquet manifest (path or URL)")], as_json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Check every row; print each problem with its row, column and reason."""
    from flows.manifest import ManifestError, read_manifest

    settings = settings_from(config, None, None, None, as_json)

    def body() -> int:
        try:
            manifest = read_manifest(file, settings.storage_options or None, settings.render.input_roots)
        except ManifestError as exc:
            fail(str(exc), as_json)
        if as_json:
            emit_json({"ok": not manifest.errors, **_manifest_document(manifest)})
        else:
            console.print(f"{manifest.uri}: {manifest.rows} rows, [green]{len(manifest.shots)} valid[/green], "
                          f"campaigns {', '.join(manifest.campaign_ids) or '-'}")
            if manifest.errors:
                console.print(_row_errors_table(manifest.errors))
        return EXIT_OK if not manifest.errors else EXIT_FAILED

    guarded(as_json, body)


@manifest_app.command("build")
def manifest_build(
    brief: Annotated[Path, typer.Argument(help="CSV or YAML brief", exists=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Parquet file to write")],
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Convert a CSV/YAML brief into a Parquet manifest (valid rows only; problems are listed)."""
    from flows.briefs import build_manifest
    from flows.manifest import ManifestError

    settings = settings_from(config, None, None, None, as_json)

    def body() -> int:
        try:
            manifest, path = build_manifest(brief, output, settings.render.input_roots)
        except (ManifestError, OSError) as exc:
            fail(f"{exc}", as_json)
        if as_json:
            emit_json({"ok": not manifest.errors, "output": str(path), **_manifest_document(manifest)})
        else:
            console.print(f"wrote {path}: {len(manifest.shots)} shots from {manifest.rows} rows")
            if manifest.errors:
                console.print(_row_errors_table(manifest.errors))
        return EXIT_OK if not manifest.errors else EXIT_FAILED

    guarded(as_json, body)


# ---- planning and rendering ----------------------------------------------------------------


@app.command()
def plan(
    manifest: Annotated[str, typer.Argument(help="Parquet manifest (path or URL)")],
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    store: StoreOpt = None,
    model: ModelOpt = None,
) -> None:
    """Dry run: the jobs, which are already rendered, and a GPU-time quote for the rest."""
    from catalog import Store
    from flows.manifest import ManifestError, read_manifest
    from flows.plan import make_plan, model_info, quote_gpu_seconds

    settings = settings_from(config, store, model, None, as_json)

    def body() -> int:
        try:
            parsed = read_manifest(manifest, settings.storage_options or None, settings.render.input_roots)
        except ManifestError as exc:
            fail(str(exc), as_json)
        catalog = Store(settings.store_url, settings.storage_options)
        result = make_plan(parsed.shots, model_info(settings), catalog)
        gpu_seconds, basis = quote_gpu_seconds(result, catalog, settings.render.gpu_seconds_per_clip_second)
        jobs = [{**job.entry(), "resolution": job.resolution, "seconds": job.seconds, "width": job.width,
                 "height": job.height, "cached": job.render_key in result.cached} for job in result.jobs]
        document = {
            "ok": not (parsed.errors or result.errors),
            "jobs": len(result.jobs), "cached": len(result.cached), "to_render": len(result.todo),
            "gpu_seconds_quote": round(gpu_seconds, 1), "quote_basis": basis,
            "row_errors": [str(e) for e in parsed.errors] + result.errors, "plan": jobs,
        }
        if as_json:
            emit_json(document)
        else:
            table = Table(header_style="bold")
            for column in ("campaign", "shot", "variant", "size", "s", "seed", "status"):
                table.add_column(column)
            for job in jobs[:200]:
                table.add_row(job["campaign_id"], job["shot_id"], job["variant"], f"{job['width']}x{job['height']}",
                              f"{job['seconds']:g}", str(job["seed"]), "[dim]cached[/dim]" if job["cached"] else "render")
            console.print(table)
            if len(jobs) > 200:
                console.print(f"... and {len(jobs) - 200} more")
            console.print(f"{len(result.jobs)} jobs: {len(result.cached)} already rendered, "
                          f"[bold]{len(result.todo)} to render[/bold], about {gpu_seconds / 3600:.2f} GPU-hours ({basis})")
            if parsed.errors:
                console.print(_row_errors_table(parsed.errors))
            for error in result.errors:
                console.print(f"[red]skipped[/red] {error}")
        return EXIT_OK if document["ok"] else EXIT_FAILED

    guarded(as_json, body)


def _run_flow(run: Callable[[], Any], total_hint: str, as_json: bool) -> int:
    """Run a flow in-process with a progress bar; map its end state to an exit code."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows.manifest import ManifestError
    from flows.progress import progress_listener

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err_console, disable=as_json)
    bar = progress.add_task(total_hint, total=None)

    def listener(totals) -> None:
        progress.update(bar, total=totals.planned, completed=totals.done,
                        description=f"{total_hint}: {totals.rendered} rendered, {totals.cached} cached, {totals.failed} failed")

    with progress, progress_listener(listener):
        state = run()
    if state.is_completed():
        document = state.result()
        code = EXIT_FAILED if document["failed"] or document["row_errors"] else EXIT_OK
    else:
        try:
            state.result()
        except (ManifestError, ConfigError, ValueError) as exc:  # invalid input: nothing was rendered
            fail(str(exc), as_json, code=EXIT_INVALID)
        except Exception as exc:  # RunFailed (too many shots failed) or a crash: summarised, logged in Prefect
            document = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if as_json:
            emit_json(document)
        else:
            err_console.print(f"[red]run failed:[/red] {document['error']}", highlight=False)
        return EXIT_FAILED
    _print_run(document, as_json)
    return code


def _print_run(document: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json({"ok": not document["failed"] and not document["row_errors"], **document})
        return
    console.print(f"[bold]{document['rendered']} rendered[/bold], {document['cached']} already rendered, "
                  f"{document['failed']} failed, {document['gpu_seconds']:.1f} GPU-seconds")
    for campaign, number in document["versions"].items():
        console.print(f"published [bold]{campaign}[/bold] version {number}")
    for campaign, sheet in document["contact_sheets"].items():
        console.print(f"contact sheet for {campaign}: {sheet}")
    if document["failures"]:
        table = Table(title="failed shots", header_style="bold red")
        for column in ("shot", "variant", "error_class", "message", "retryable"):
            table.add_column(column)
        for row in document["failures"]:
            table.add_row(row["shot"], row["variant"], row["error_class"], row["message"], str(row["retryable"]))
        console.print(table)
    for error in document["row_errors"]:
        console.print(f"[red]skipped[/red] {error}", highlight=False)


@app.command()
def render(
    manifest: Annotated[str, typer.Argument(help="Parquet manifest (path or URL)")],
    force: Annotated[bool, typer.Option("--force", help="render again even what the catalog has")] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    store: StoreOpt = None,
    model: ModelOpt = None,
    ray_address: RayOpt = None,
) -> None:
    """Run the nightly flow for a manifest now."""
    settings_from(config, store, model, ray_address, as_json)  # first: it may point Prefect at a server
    from flows.nightly import nightly_campaign_render

    def body() -> int:
        return _run_flow(lambda: nightly_campaign_render(
            manifest_uri=manifest, store_url=store, model=model, config_file=str(config) if config else None,
            ray_address=ray_address, force=force, return_state=True), "rendering", as_json)

    guarded(as_json, body)


@app.command()
def backfill(
    campaign: Annotated[str, typer.Argument(help="campaign id")],
    languages: Annotated[Optional[str], typer.Option("--languages", help="comma-separated, e.g. en,de,ja")] = None,
    aspect_ratios: Annotated[Optional[str], typer.Option("--aspect-ratios", help="comma-separated, e.g. 9:16,1:1")] = None,
    takes: Annotated[Optional[int], typer.Option("--takes", min=1, help="takes per variant")] = None,
    shots: Annotated[Optional[str], typer.Option("--shots", help="comma-separated shot ids")] = None,
    force: Annotated[bool, typer.Option("--force")] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    store: StoreOpt = None,
    model: ModelOpt = None,
    ray_address: RayOpt = None,
) -> None:
    """Render the missing variants of a published campaign (new languages, aspect ratios, takes)."""
    settings_from(config, store, model, ray_address, as_json)  # first: it may point Prefect at a server
    from flows.nightly import backfill_variants
    split = lambda text: [part.strip() for part in text.split(",") if part.strip()] if text else None  # noqa: E731

    def body() -> int:
        return _run_flow(lambda: backfill_variants(
            campaign_id=campaign, languages=split(languages), aspect_ratios=split(aspect_ratios), takes=takes,
            shot_ids=split(shots), store_url=store, model=model, config_file=str(config) if config else None,
            ray_address=ray_address, force=force, return_state=True), "backfilling", as_json)

    guarded(as_json, body)


# ---- the catalog ---------------------------------------------------------------------------


@app.command()
def versions(campaign: Annotated[str, typer.Argument(help="campaign id")], as_json: JsonOpt = False,
             config: ConfigOpt = None, store: StoreOpt = None) -> None:
    """List a campaign's published versions."""
    from catalog import InvalidId, Store

    settings = settings_from(config, store, None, None, as_json)

    def body() -> int:
        try:
            infos = Store(settings.store_url, settings.storage_options).versions.list(campaign)
        except InvalidId as exc:
            fail(str(exc), as_json)
        if not infos:
            fail(f"campaign {campaign!r} has no published versions in {settings.store_url}", as_json)
        rows = [{"version": i.number, "created_at": i.created_at.isoformat(), "entries": i.entries, "ok": i.ok,
                 "failed": i.failed, "run_id": i.run_id, "model_fingerprint": i.model_fingerprint, "uri": i.uri} for i in infos]
        if as_json:
            emit_json({"ok": True, "campaign_id": campaign, "versions": rows})
        else:
            table = Table(title=f"{campaign} versions", header_style="bold")
            for column in ("version", "created (UTC)", "clips", "ok", "failed", "run"):
                table.add_column(column)
            for r in rows:
                table.add_row(str(r["version"]), r["created_at"][:19], str(r["entries"]), str(r["ok"]), str(r["failed"]), (r["run_id"] or "")[:8])
            console.print(table)
        return EXIT_OK

    guarded(as_json, body)


@app.command()
def show(campaign: Annotated[str, typer.Argument(help="campaign id")],
         version: Annotated[Optional[int], typer.Option("--version", min=1, help="default: latest")] = None,
         as_json: JsonOpt = False, config: ConfigOpt = None, store: StoreOpt = None) -> None:
    """List the files of a campaign version (latest by default)."""
    from catalog import InvalidId, Store, VersionNotFound

    settings = settings_from(config, store, None, None, as_json)

    def body() -> int:
        try:
            document = Store(settings.store_url, settings.storage_options).versions.read(campaign, version)
        except (InvalidId, VersionNotFound) as exc:
            fail(str(exc), as_json)
        if as_json:
            emit_json({"ok": True, **document})
            return EXIT_OK
        console.print(f"[bold]{campaign}[/bold] version {document['version']} ({document['created_at']}), "
                      f"manifest sha256 {str(document.get('manifest_sha256'))[:12]}")
        table = Table(header_style="bold")
        for column in ("shot", "variant", "status", "file"):
            table.add_column(column, overflow="fold")
        for e in document["entries"]:
            table.add_row(e["shot_id"], e["variant"], e["status"], e.get("blob_uri") or e.get("error_class") or "")
        console.print(table)
        return EXIT_OK

    guarded(as_json, body)


# ---- deployments and the UI -----------------------------------------------------------------


@app.command()
def deploy(as_json: JsonOpt = False, config: ConfigOpt = None, store: StoreOpt = None, model: ModelOpt = None,
           ray_address: RayOpt = None) -> None:
    """Register the nightly and backfill deployments with the Prefect server's work pool."""
    settings = settings_from(config, store, model, ray_address, as_json)  # before Prefect is imported
    from flows.deploy import build_deployments, ensure_work_pool

    def body() -> int:
        if ensure_work_pool(settings) and not as_json:
            console.print(f"created work pool [bold]{settings.prefect.work_pool}[/bold] (process, one run at a time)")
        ids = {}
        for deployment in build_deployments(settings, str(config) if config else None):
            ids[deployment.name] = str(deployment.apply(work_pool_name=settings.prefect.work_pool))
        if as_json:
            emit_json({"ok": True, "work_pool": settings.prefect.work_pool, "deployments": ids})
        else:
            for name, deployment_id in ids.items():
                console.print(f"registered [bold]{name}[/bold] ({deployment_id}) on work pool {settings.prefect.work_pool}")
            console.print(f"start a worker: prefect worker start --pool {settings.prefect.work_pool}")
        return EXIT_OK

    guarded(as_json, body)


@app.command()
def serve(config: ConfigOpt = None, store: StoreOpt = None, model: ModelOpt = None, ray_address: RayOpt = None) -> None:
    """Serve the nightly (cron) and backfill deployments from this process until Ctrl-C."""
    settings = settings_from(config, store, model, ray_address, False)  # before Prefect is imported
    from flows.deploy import serve_deployments
    if not settings.schedule.manifest_uri:
        err_console.print("[yellow]schedule.manifest_uri is not set: the nightly deployment has no schedule[/yellow]")
    serve_deployments(settings, str(config) if config else None)


@app.command()
def ui(port: Annotated[int, typer.Option("--port", help="port on 127.0.0.1")] = 4200) -> None:
    """Start the Prefect server and UI on 127.0.0.1 (the demo's runs show up there)."""
    from flows.ui import run_ui

    raise typer.Exit(run_ui(port, console))


@app.command()
def demo(as_json: JsonOpt = False, store: StoreOpt = None) -> None:
    """Render the bundled example campaign end to end (tiny model, local Ray, embedded Prefect)."""
    from flows.demo import run_demo

    guarded(as_json, lambda: run_demo(store or "./horse-store", as_json, console, _run_flow))


def main() -> None:  # `python -m flows.cli`
    app()


if __name__ == "__main__":
    main()
