"""`horse plan`, `horse render`, `horse backfill`, and how a flow run becomes command output."""

from __future__ import annotations

from typing import Annotated, Any, Callable, Optional

import typer
from rich.table import Table

from flows.cli.command import (
    EXIT_FAILED, ConfigOpt, InvalidInput, JsonOpt, ModelOpt, Outcome, RayOpt, StoreOpt, console, err_console,
    invalid_input, run_command,
)
from flows.settings import run_budget_overrides

app = typer.Typer()
ManifestArg = Annotated[str, typer.Argument(help="Parquet manifest (path or URL)")]
ForceOpt = Annotated[bool, typer.Option("--force", help="render again even what the catalog has (approved variants stay)")]
ForceApprovedOpt = Annotated[Optional[str], typer.Option(
    "--force-approved", help="comma-separated shots whose approved variants render again (recorded as forced)")]
DestinationsOpt = Annotated[Optional[str], typer.Option(
    "--destinations", help="comma-separated delivery destinations for rows without their own (render.destinations)")]


BudgetHoursOpt = Annotated[Optional[float], typer.Option(
    "--budget-gpu-hours", help="this run's budget in GPU-hours (instead of budget.run.gpu_hours)")]
BudgetMoneyOpt = Annotated[Optional[float], typer.Option(
    "--budget-money", help="this run's budget in cost.currency (instead of budget.run.money)")]
AllowOverOpt = Annotated[bool, typer.Option(
    "--allow-over-budget", help="start even if the quote is over a budget: render, most important first, until it is reached")]


@app.command()
def plan(
    manifest: ManifestArg,
    gpus: Annotated[Optional[float], typer.Option("--gpus", min=0, help="what if the cluster had N GPUs (default: "
                                                  "the configured Ray cluster's, or the configured actors)")] = None,
    by: Annotated[Optional[str], typer.Option("--by", help="deadline, HH:MM (next occurrence) or ISO 8601, in the "
                                              "schedule's timezone: does the run finish in time?")] = None,
    device_type: Annotated[Optional[str], typer.Option("--device-type", help="quote for this device, e.g. "
                                                       "'NVIDIA H100 80GB HBM3' (default: cost.device_type)")] = None,
    budget_gpu_hours: BudgetHoursOpt = None,
    budget_money: BudgetMoneyOpt = None,
    rows: Annotated[int, typer.Option("--rows", min=0, help="jobs shown in the table (--json lists every job)")] = 40,
    as_json: JsonOpt = False, config: ConfigOpt = None, store: StoreOpt = None, model: ModelOpt = None,
    ray_address: RayOpt = None,
) -> None:
    """Dry run: the jobs, which are already rendered, a quote per stage, time to finish, budgets."""

    def body(settings) -> Outcome:
        from flows.dry_run import dry_run
        from flows.manifest import ManifestError

        with invalid_input(ManifestError):
            document = dry_run(manifest, settings, gpus=gpus, by=by, device_type=device_type,
                               rows=None if as_json else rows)
        return Outcome(document, lambda: show_plan(document))

    run_command(as_json, body, config, store, model, ray_address, run_budget_overrides(budget_gpu_hours, budget_money))


def show_plan(document: dict[str, Any]) -> None:
    jobs = document["plan"]
    if jobs:
        table = Table(header_style="bold")
        for column in ("campaign", "shot", "variant", "backend", "size", "s", "seed", "priority", "GPU-s", "status"):
            table.add_column(column)
        for job in jobs:
            table.add_row(job["campaign_id"], job["shot_id"], job["variant"], job["backend"],
                          f"{job['width']}x{job['height']}", f"{job['seconds']:g}", str(job["seed"]),
                          f"{job['priority']}{' hero' if job['hero'] else ''}",
                          "" if job["cached"] or job["gpu_seconds"] is None else f"{job['gpu_seconds']:g}",
                          "[dim]cached[/dim]" if job["cached"] else "render")
        console.print(table)
    if document["jobs"] > len(jobs):
        console.print(f"... and {document['jobs'] - len(jobs)} more (--rows N shows more, --json lists every job)")
    quote = document["quote"]
    kept = f"{len(document['kept_approved'])} kept (approved), " if document["kept_approved"] else ""
    console.print(f"{document['jobs']} jobs: {document['cached']} already rendered, {kept}"
                  f"[bold]{document['to_render']} "
                  f"to render[/bold], about {quote['gpu_seconds'] / 3600:.3g} GPU-hours "
                  f"({quote['gpu_seconds_low'] / 3600:.3g}-{quote['gpu_seconds_high'] / 3600:.3g}) "
                  f"on {quote['device_type'] or 'an unknown device'}", highlight=False)
    console.print(f"  {document['quote_basis']}", highlight=False)
    console.print("  per stage (GPU-seconds): " + ", ".join(f"{s['stage']} {s['gpu_seconds']:g}" for s in quote["stages"]),
                  highlight=False)
    console.print(f"  already rendered: {quote['cached_share']:.0%} of the plan's GPU time; previews of every take "
                  f"{quote['previews']['gpu_seconds']:g} GPU-s, then promoting one take per variant "
                  f"{quote['promotes']['gpu_seconds']:g} GPU-s", highlight=False)
    finish = document["time_to_finish"]
    if finish.get("slots"):
        line = (f"  on {finish['slots']} actor(s) ({finish['slots_from']}): {_duration(finish['hours'])}, done at "
                f"{finish['finish_at']} ({finish['finish_at_high']} at the high end)")
        if "fits" in finish:
            line += f"; {'fits' if finish['fits'] else '[red]does not fit[/red]'} the deadline {finish['by']}"
        console.print(line, highlight=False)
    else:
        console.print(f"  time to finish: {finish['slots_from']}", highlight=False)
    for name, api in document["api_quote"].items():
        money = "no price configured" if api["usd"] is None else f"about ${api['usd']:,.2f}"
        console.print(f"{name} ({api['model']}): {api['clips']} clips to render, {money}, "
                      f"~{api['estimated_tokens']:,} tokens")
    for warning in document["warnings"]:
        err_console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    show_skipped(document["row_errors"])


def _duration(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"


PreviewOpt = Annotated[bool, typer.Option("--preview", help="every take as a 256p preview, base latents kept for "
                                                            "`horse promote`")]


@app.command()
def render(manifest: ManifestArg, force: ForceOpt = False, preview: PreviewOpt = False,
           destinations: DestinationsOpt = None, force_approved: ForceApprovedOpt = None,
           allow_over_budget: AllowOverOpt = False, budget_gpu_hours: BudgetHoursOpt = None,
           budget_money: BudgetMoneyOpt = None, as_json: JsonOpt = False, config: ConfigOpt = None,
           store: StoreOpt = None, model: ModelOpt = None, ray_address: RayOpt = None) -> None:
    """Run the nightly flow for a manifest now (a quote over a budget refuses to start: exit 2)."""

    def body(settings) -> Outcome:
        from flows.nightly import nightly_campaign_render

        return run_flow(lambda: nightly_campaign_render(
            manifest_uri=manifest, store_url=store, model=model, config_file=str(config) if config else None,
            ray_address=ray_address, force=force, preview=preview, allow_over_budget=allow_over_budget,
            budget_gpu_hours=budget_gpu_hours, budget_money=budget_money, destinations=split_csv(destinations),
            force_approved=split_csv(force_approved), return_state=True), "rendering", as_json)

    run_command(as_json, body, config, store, model, ray_address, run_budget_overrides(budget_gpu_hours, budget_money))


def split_csv(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


@app.command()
def backfill(
    campaign: Annotated[str, typer.Argument(help="campaign id")],
    languages: Annotated[Optional[str], typer.Option("--languages", help="comma-separated, e.g. en,de,ja")] = None,
    aspect_ratios: Annotated[Optional[str], typer.Option("--aspect-ratios", help="comma-separated, e.g. 9:16,1:1")] = None,
    takes: Annotated[Optional[int], typer.Option("--takes", min=1, help="takes per variant")] = None,
    shots: Annotated[Optional[str], typer.Option("--shots", help="comma-separated shot ids")] = None,
    force: ForceOpt = False,
    destinations: DestinationsOpt = None,
    force_approved: ForceApprovedOpt = None,
    allow_over_budget: AllowOverOpt = False,
    budget_gpu_hours: BudgetHoursOpt = None,
    budget_money: BudgetMoneyOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    store: StoreOpt = None,
    model: ModelOpt = None,
    ray_address: RayOpt = None,
) -> None:
    """Render the missing variants of a published campaign (new languages, aspect ratios, takes)."""

    def body(settings) -> Outcome:
        from flows.nightly import backfill_variants

        return run_flow(lambda: backfill_variants(
            campaign_id=campaign, languages=split_csv(languages), aspect_ratios=split_csv(aspect_ratios), takes=takes,
            shot_ids=split_csv(shots), store_url=store, model=model, config_file=str(config) if config else None,
            ray_address=ray_address, force=force, allow_over_budget=allow_over_budget,
            budget_gpu_hours=budget_gpu_hours, budget_money=budget_money, destinations=split_csv(destinations),
            force_approved=split_csv(force_approved), return_state=True), "backfilling", as_json)

    run_command(as_json, body, config, store, model, ray_address, run_budget_overrides(budget_gpu_hours, budget_money))


def run_flow(start: Callable[[], Any], label: str, as_json: bool,
             show: Callable[[dict[str, Any]], None] | None = None) -> Outcome:
    """Run a flow in this process with a progress bar (on stderr) and turn its end state into an
    outcome, shown with `show` (default `show_run`): invalid input raises InvalidInput; a failed
    or crashed run is an error document."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows.manifest import ManifestError
    from flows.progress import progress_listener
    from flows.settings import ConfigError

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err_console, disable=as_json)
    bar = progress.add_task(label, total=None)

    def listener(totals) -> None:
        progress.update(bar, total=totals.planned, completed=totals.done,
                        description=f"{label}: {totals.rendered} rendered, {totals.cached} cached, "
                                    f"{totals.degraded} degraded, {totals.failed} failed")

    with progress, progress_listener(listener):
        state = start()
    if state.is_completed():
        document = state.result()
        ok = not (document["failed"] or document["degraded"] or document["row_errors"] or document["not_rendered_budget"])
        return Outcome({"ok": ok, **document}, lambda: (show or show_run)(document))
    try:
        state.result()
    except (ManifestError, ConfigError, ValueError) as exc:  # invalid input: nothing was rendered
        raise InvalidInput(str(exc)) from None
    except Exception as exc:  # RunFailed (too many shots failed) or a crash: summarised, logged in Prefect
        error = f"{type(exc).__name__}: {exc}"
    return Outcome({"ok": False, "error": error},
                   lambda: err_console.print(f"[red]run failed:[/red] {error}", highlight=False), EXIT_FAILED)


def show_run(document: dict[str, Any]) -> None:
    console.print(f"[bold]{document['rendered']} rendered[/bold], {document['cached']} already rendered, "
                  f"{document.get('kept_approved', 0)} kept (approved), "
                  f"{document['degraded']} degraded, {document['failed']} failed, {document['gpu_seconds']:.1f} GPU-seconds")
    from flows.progress import accelerator_line

    if line := accelerator_line(document.get("accelerator")):
        console.print(line, highlight=False)
    if document["not_rendered_budget"]:
        console.print(f"[yellow]{document['not_rendered_budget']} {document['budget_stop']}[/yellow]: "
                      "render again (with a larger budget) for the rest", highlight=False)
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
    if document["qc_failures"]:
        table = Table(title="delivery QC failures (published, marked failed)", header_style="bold yellow")
        for column in ("shot", "variant", "destination", "failed checks: measured (limit)"):
            table.add_column(column, overflow="fold")
        for row in document["qc_failures"]:
            table.add_row(row["shot"], row["variant"], row["destination"], row["failed_checks"])
        console.print(table)
    show_skipped(document["row_errors"])
    for notice in document.get("notices", []):
        console.print(f"[yellow]notice:[/yellow] {notice}", highlight=False)


def show_skipped(errors: list[str]) -> None:
    for error in errors:
        console.print(f"[red]skipped[/red] {error}", highlight=False)
