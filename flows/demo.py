"""`horse demo`: the bundled example campaign, rendered end to end on this machine.

Real path, small model: the brief in configs/campaigns becomes a Parquet manifest, the nightly
flow renders it with the tiny preset on two CPU Ray actors, and the clips land in ./horse-store.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from catalog import Store
from configs import CONFIG_DIR
from flows.briefs import build_manifest

BRIEF = CONFIG_DIR / "campaigns" / "aurora-tea-launch.yaml"
DEMO_CONFIG = CONFIG_DIR / "demo.yaml"


def run_demo(store_url: str, as_json: bool, console: Console, run_flow: Callable[..., int]) -> int:
    from flows.nightly import nightly_campaign_render

    started = time.perf_counter()
    manifest_path = Path(tempfile.mkdtemp(prefix="horse-demo-")) / "aurora-tea-launch.parquet"
    manifest, _ = build_manifest(BRIEF, manifest_path)
    if not as_json:
        console.print(f"[bold]Horse demo[/bold]: campaign {', '.join(manifest.campaign_ids)} "
                      f"({len(manifest.shots)} shots) from {BRIEF.relative_to(CONFIG_DIR.parent)}, tiny model, store {store_url}")
    captured: dict[str, Any] = {}

    def run():
        state = nightly_campaign_render(manifest_uri=str(manifest_path), store_url=store_url,
                                        config_file=str(DEMO_CONFIG), return_state=True)
        if state.is_completed():
            captured.update(state.result())
        return state

    code = run_flow(run, "rendering", as_json)
    if as_json or not captured:
        return code
    store = Store(store_url)
    for campaign, number in captured["versions"].items():
        version = store.versions.read(campaign, number)
        table = Table(title=f"{campaign} version {number}", header_style="bold")
        for column in ("shot", "variant", "status", "file"):
            table.add_column(column, overflow="fold")
        for entry in version["entries"]:
            table.add_row(entry["shot_id"], entry["variant"], entry["status"], _local(entry.get("blob_uri")))
        console.print(table)
    if captured["rendered"] == 0 and captured["cached"]:
        console.print("[green]everything was already rendered[/green]: nothing to do (delete the store to start over)")
    console.print(f"done in {time.perf_counter() - started:.0f}s. Next:")
    console.print("  horse versions aurora-tea-launch   # the campaign's versions")
    console.print("  horse ui                           # the runs, progress, failures and summary in the Prefect UI")
    return code


def _local(uri: str | None) -> str:
    """A path the user can paste, relative to where they ran the demo."""
    import os

    path = (uri or "").removeprefix("file://")
    return os.path.relpath(path) if path.startswith("/") else path
