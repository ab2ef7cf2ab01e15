"""`horse qc`: delivery QC of any mp4 (measured now) or of a campaign version (its stored results)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from flows.cli.command import ConfigOpt, InvalidInput, JsonOpt, Outcome, StoreOpt, console, invalid_input, run_command

app = typer.Typer()


@app.command()
def qc(
    target: Annotated[str, typer.Argument(help="an mp4 file, or a campaign id")],
    destination: Annotated[Optional[list[str]], typer.Option(
        "--destination", "-d", help="check against this destination (repeat, or comma-separate); "
                                    "default: every destination for a file, those of each clip for a campaign")] = None,
    version: Annotated[Optional[int], typer.Option("--version", min=1, help="campaign version (default: latest)")] = None,
    seconds: Annotated[Optional[float], typer.Option("--seconds", help="a file's brief length: checks its duration")] = None,
    speech: Annotated[bool, typer.Option("--speech", help="a file with dialogue: long silences fail")] = False,
    as_json: JsonOpt = False, config: ConfigOpt = None, store: StoreOpt = None,
) -> None:
    """Delivery QC: loudness, true peak, black and frozen picture, lengths, format, per destination;
    for a campaign also the dialogue gate (what each clip was heard saying).

    Exit 1 when a check failed (or a clip was never checked against a destination asked for), a clip's
    speech failed the dialogue gate included; lines no recogniser could hear are listed as unchecked."""

    def body(settings) -> Outcome:
        from flows.destinations import load_destinations, pick

        known = load_destinations(settings.render.destination_folders)
        names = [n.strip() for part in destination or [] for n in part.split(",") if n.strip()]
        chosen = pick(known, names) if names else None  # an unknown name: ConfigError, one line, exit 2
        if target.endswith(".mp4") or Path(target).is_file():
            return check_file(Path(target), chosen or list(known.values()), seconds, speech)
        return stored_results(settings, target, version, names)

    run_command(as_json, body, config, store)


def check_file(path: Path, destinations: list, seconds: float | None, speech: bool) -> Outcome:
    import av

    from media.qc import check, measure

    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    with invalid_input(av.error.FFmpegError):
        m = measure(path)
    if m.video is None:
        raise InvalidInput(f"{path}: no video stream")
    reports = {d.name: check(m, d, brief_seconds=seconds, expects_speech=speech) for d in destinations}
    document = {"ok": all(r.passed for r in reports.values()), "file": str(path), "measurements": m.to_dict(),
                "destinations": {name: r.to_dict() for name, r in reports.items()}}

    def show() -> None:
        audio = m.audio.loudness if m.audio else None
        console.print(f"[bold]{path}[/bold]: {m.video.width}x{m.video.height} {m.video.fps} fps, {m.video.frames} frames"
                      + (f", {audio.integrated_lufs} LUFS, true peak {audio.true_peak_dbtp} dBTP" if audio else ", no sound"),
                      highlight=False)
        table = Table(header_style="bold")
        for column in ("destination", "result", "failed checks: measured (limit)"):
            table.add_column(column, overflow="fold")
        for name, r in reports.items():
            failed = "; ".join(f"{c.name} {c.measured} ({c.limit})" for c in r.failures())
            table.add_row(name, "[green]pass[/green]" if r.passed else "[red]FAIL[/red]", failed)
        console.print(table)

    return Outcome(document, show)


def stored_results(settings, campaign: str, version: int | None, names: list[str]) -> Outcome:
    from catalog import InvalidId, Store, VersionNotFound

    with invalid_input(InvalidId, VersionNotFound):
        body = Store(settings.store_url, settings.storage_options).versions.read(campaign, version)
    rows: list[dict[str, Any]] = []
    for e in body["entries"]:
        results = e.get("qc") or {}
        for name in names or sorted(results) or [None]:
            result = results.get(name)
            status = ("not rendered" if e["status"] == "failed" else "not checked") if result is None \
                else "passed" if result["passed"] else "failed"
            rows.append({"shot_id": e["shot_id"], "variant": e["variant"], "render_key": e["render_key"],
                         "destination": name, "status": status, "rendered_seed": e.get("rendered_seed"),
                         "failed_checks": {c: v for c, v in result["checks"].items() if not v["passed"]} if result else {},
                         "checks": result["checks"] if result else {},
                         "master_uri": result.get("master_uri") if result else None,
                         "dialogue_status": e.get("dialogue_status"), "dialogue": e.get("dialogue")})
    counts = {s: sum(r["status"] == s for r in rows) for s in ("passed", "failed")}
    counts["not_checked"] = len(rows) - counts["passed"] - counts["failed"]
    heard = [e.get("dialogue_status") for e in body["entries"]]
    counts |= {f"dialogue_{s}": heard.count(s) for s in ("passed", "unchecked")}
    counts["dialogue_failed"] = heard.count("dialogue_failed")
    # An unchecked line is shown, not failed: with the default configuration (no Whisper staged) every
    # line is unchecked, and the run's summary already says the gate was off.
    document = {"ok": counts["failed"] == counts["not_checked"] == counts["dialogue_failed"] == 0,
                "campaign_id": campaign, "version": body["version"], **counts, "clips": rows}

    def show() -> None:
        table = Table(title=f"{campaign} version {body['version']}: delivery QC", header_style="bold")
        for column in ("shot", "variant", "destination", "result", "failed checks: measured (limit)", "dialogue"):
            table.add_column(column, overflow="fold")
        for r in rows:
            result = {"passed": "[green]pass[/green]", "failed": "[red]FAIL[/red]"}.get(r["status"], f"[yellow]{r['status']}[/yellow]")
            failed = "; ".join(f"{c} {v['measured']} ({v['limit']})" for c, v in r["failed_checks"].items())
            table.add_row(r["shot_id"], r["variant"], r["destination"] or "-", result, failed, _dialogue(r["dialogue"]))
        console.print(table)
        console.print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['not_checked']} not checked; "
                      f"dialogue: {counts['dialogue_passed']} passed, {counts['dialogue_failed']} failed, "
                      f"{counts['dialogue_unchecked']} unchecked")

    return Outcome(document, show)


def _dialogue(result: dict | None) -> str:
    """The dialogue gate's cell: the result, and for a failure why and what was heard."""
    if not result:
        return "-"
    if result["status"] == "passed":
        return f"[green]pass[/green] {result.get('reason')}"
    if result["status"] == "unchecked":
        return f"[yellow]unchecked[/yellow] {result.get('reason')}"
    return f"[red]FAIL[/red] {result.get('reason')}; heard {result.get('transcript')!r}"
