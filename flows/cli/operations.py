"""Running Horse as a service and checking the machine: `horse deploy`, `horse serve`, `horse ui`,
`horse doctor`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from flows.cli.command import (
    ConfigOpt, JsonOpt, ModelOpt, Outcome, RayOpt, StoreOpt, console, err_console, run_command,
)

app = typer.Typer()


@app.command()
def deploy(as_json: JsonOpt = False, config: ConfigOpt = None, store: StoreOpt = None, model: ModelOpt = None,
           ray_address: RayOpt = None) -> None:
    """Register the nightly, backfill and promote deployments with the Prefect server's work pool."""

    def body(settings) -> Outcome:
        from flows.deploy import build_deployments, ensure_work_pool

        pool = settings.prefect.work_pool
        if ensure_work_pool(settings) and not as_json:
            console.print(f"created work pool [bold]{pool}[/bold] (process, one run at a time)")
        ids = {deployment.name: str(deployment.apply(work_pool_name=pool))
               for deployment in build_deployments(settings, str(config) if config else None)}

        def show() -> None:
            for name, deployment_id in ids.items():
                console.print(f"registered [bold]{name}[/bold] ({deployment_id}) on work pool {pool}")
            console.print(f"start a worker: prefect worker start --pool {pool}")

        return Outcome({"ok": True, "work_pool": pool, "deployments": ids}, show)

    run_command(as_json, body, config, store, model, ray_address)


@app.command()
def serve(config: ConfigOpt = None, store: StoreOpt = None, model: ModelOpt = None, ray_address: RayOpt = None) -> None:
    """Serve the nightly (cron), backfill and promote deployments from this process until Ctrl-C."""

    def body(settings) -> Outcome:
        from flows.deploy import serve_deployments

        if not settings.schedule.manifest_uri:
            err_console.print("[yellow]schedule.manifest_uri is not set: the nightly deployment has no schedule[/yellow]")
        serve_deployments(settings, str(config) if config else None)
        return Outcome({"ok": True})

    run_command(False, body, config, store, model, ray_address)


@app.command()
def ui(port: Annotated[int, typer.Option("--port", help="port on 127.0.0.1")] = 4200) -> None:
    """Start the Prefect server and UI on 127.0.0.1 (the demo's runs show up there)."""

    def body(settings) -> Outcome:
        from flows.ui import run_ui

        return Outcome({}, code=run_ui(port, console))

    run_command(False, body)


@app.command()
def doctor(as_json: JsonOpt = False, config: ConfigOpt = None, store: StoreOpt = None, model: ModelOpt = None,
           ray_address: RayOpt = None) -> None:
    """Check torch/GPU, Ray, Prefect, the video/audio encoders and the store."""

    def body(settings) -> Outcome:
        from flows.doctor import run_checks

        if not as_json:
            console.print("[bold]horse doctor[/bold]: checking this machine ...")
        checks = run_checks(settings)
        ok = all(c.ok for c in checks if c.required)

        def show() -> None:
            table = Table(show_header=True, header_style="bold")
            for column in ("check", "", "detail", "s"):
                table.add_column(column)
            for c in checks:
                mark = "[green]ok[/green]" if c.ok else ("[red]FAIL[/red]" if c.required else "[yellow]warn[/yellow]")
                table.add_row(c.name, mark, c.detail, f"{c.seconds:.1f}")
            console.print(table)
            console.print("[green]ready to render[/green]" if ok else "[red]not ready: see FAIL rows above[/red]")

        return Outcome({"ok": ok, "checks": [c.as_dict() for c in checks]}, show)

    run_command(as_json, body, config, store, model, ray_address)
