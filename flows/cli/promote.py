"""`horse promote`: finish chosen preview takes at 540p or 1080p from their stored base latents."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from flows.cli.command import ConfigOpt, JsonOpt, ModelOpt, Outcome, RayOpt, StoreOpt, console, run_command
from flows.cli.runs import DestinationsOpt, run_flow, show_run, split_csv

app = typer.Typer()


@app.command()
def promote(
    campaign: Annotated[str, typer.Argument(help="campaign id")],
    to: Annotated[str, typer.Option("--to", help="target tier: 540p or 1080p")],
    shots: Annotated[Optional[str], typer.Option("--shots", help="comma-separated shot ids (default: all)")] = None,
    variants: Annotated[Optional[str], typer.Option("--variants", help="comma-separated preview variants, e.g. "
                                                                         "en-16x9-t2 (default: all)")] = None,
    destinations: DestinationsOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    store: StoreOpt = None,
    model: ModelOpt = None,
    ray_address: RayOpt = None,
) -> None:
    """Finish chosen preview takes at 540p/1080p from their stored base latents.

    The campaign's next version lists each promoted clip beside its preview."""

    def body(settings) -> Outcome:
        from flows.promote import promote_takes

        return run_flow(lambda: promote_takes(
            campaign_id=campaign, to=to, shot_ids=split_csv(shots), variants=split_csv(variants), store_url=store,
            model=model, config_file=str(config) if config else None, ray_address=ray_address,
            destinations=split_csv(destinations), return_state=True),
            f"promoting to {to}", as_json, show_promoted)

    run_command(as_json, body, config, store, model, ray_address)


def show_promoted(document: dict[str, Any]) -> None:
    table = Table(title="promoted takes", header_style="bold")
    for column in ("shot", "variant", "from", "status", "base latent", "file"):
        table.add_column(column, overflow="fold")
    for e in document["promoted"]:
        latent = "rendered again (was gone)" if e["base_rerendered"] else "stored" if e["base_rerendered"] is False else ""
        table.add_row(e["shot_id"], e["variant"], e["from_variant"] or "", e["status"], latent, e["blob_uri"] or "")
    console.print(table)
    show_run(document)
