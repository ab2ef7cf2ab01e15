"""`horse demo`: the bundled example campaign, rendered end to end on this machine.

Real path, small model: the brief in configs/campaigns becomes a Parquet manifest, the nightly
flow renders it with the tiny preset on two CPU Ray actors, and the clips land in ./horse-store.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import typer

from flows.cli.campaigns import show_entries
from flows.cli.command import JsonOpt, Outcome, StoreOpt, console, run_command
from flows.cli.runs import run_flow
from configs import CONFIG_DIR

BRIEF = CONFIG_DIR / "campaigns" / "aurora-tea-launch.yaml"
DEMO_CONFIG = CONFIG_DIR / "demo.yaml"

app = typer.Typer()


@app.command()
def demo(as_json: JsonOpt = False, store: StoreOpt = None) -> None:
    """Render the bundled example campaign end to end (tiny model, local Ray, embedded Prefect)."""
    store_url = store or "./horse-store"

    def body(settings) -> Outcome:
        from flows.briefs import build_manifest
        from flows.nightly import nightly_campaign_render

        started = time.perf_counter()
        manifest_path = Path(tempfile.mkdtemp(prefix="horse-demo-")) / "aurora-tea-launch.parquet"
        manifest, _ = build_manifest(BRIEF, manifest_path)
        if not as_json:
            console.print(f"[bold]Horse demo[/bold]: campaign {', '.join(manifest.campaign_ids)} ({len(manifest.shots)} "
                          f"shots) from {BRIEF.relative_to(CONFIG_DIR.parent)}, tiny model, store {store_url}")
        outcome = run_flow(lambda: nightly_campaign_render(manifest_uri=str(manifest_path), store_url=store_url,
                                                           config_file=str(DEMO_CONFIG), return_state=True),
                           "rendering", as_json)
        run = outcome.document
        if "error" in run:  # the run failed: its error is all there is to show
            return outcome

        def show() -> None:
            from catalog import Store

            outcome.show()
            for campaign, number in run["versions"].items():
                entries = Store(store_url).versions.read(campaign, number)["entries"]
                show_entries([{**e, "blob_uri": _local(e.get("blob_uri"))} for e in entries], f"{campaign} version {number}")
            if run["rendered"] == 0 and run["cached"]:
                console.print("[green]everything was already rendered[/green]: nothing to do (delete the store to start over)")
            console.print(f"done in {time.perf_counter() - started:.0f}s. Next:")
            console.print("  horse versions aurora-tea-launch   # the campaign's versions")
            console.print("  horse qc aurora-tea-launch         # delivery QC per clip and destination (social, broadcast-eu)")
            console.print("  horse ui                           # the runs, progress, failures and summary in the Prefect UI")

        return Outcome(run, show, outcome.code)

    run_command(as_json, body)


def _local(uri: str | None) -> str:
    """A path the user can paste, relative to where they ran the demo."""
    path = (uri or "").removeprefix("file://")
    return os.path.relpath(path) if path.startswith("/") else path
