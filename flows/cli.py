"""The `horse` command line (DESIGN.md §7).

Every command prints human output by default and exactly one JSON document with `--json`.
Exit codes: 0 all good, 1 some shots (or checks) failed, 2 invalid input or configuration.
"""

from __future__ import annotations

import json
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
        return load_settings(config, **overrides)
    except ConfigError as exc:
        fail(str(exc), as_json, code=EXIT_INVALID)


def fail(message: str, as_json: bool, code: int = EXIT_INVALID) -> NoReturn:
    if as_json:
        emit_json({"ok": False, "error": message})
    else:
        err_console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def guarded(as_json: bool, action: Callable[[], int]) -> NoReturn:
    """Run a command body; turn expected errors into exit code 2 with a message, never a traceback."""
    try:
        code = action()
    except ConfigError as exc:
        fail(str(exc), as_json, code=EXIT_INVALID)
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


def main() -> None:  # `python -m flows.cli`
    app()


if __name__ == "__main__":
    main()
