"""`horse adapter list` and `horse adapter train`: brand adapters (LoRA) in the catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli.command import (
    ConfigOpt, InvalidInput, JsonOpt, ModelOpt, Outcome, RayOpt, StoreOpt, console, invalid_input, run_command,
)

app = typer.Typer(help="Brand adapters (LoRA): list the registered ones, train new versions on the Ray cluster.",
                  no_args_is_help=True)


@app.command("list")
def list_adapters(as_json: JsonOpt = False, config: ConfigOpt = None, store: StoreOpt = None) -> None:
    """Every registered adapter version: the names manifests use (brand = its latest version)."""

    def body(settings) -> Outcome:
        from catalog import Store

        records = Store(settings.store_url, settings.storage_options).adapters.list()
        rows = [{"name": r["name"], "brand": r["brand"], "version": r["version"], "sha256": r["sha256"],
                 "rank": r["config"].get("rank"), "stage": r["config"].get("stage"),
                 "final_loss": (r.get("training") or {}).get("final_loss"), "registered_at": r["registered_at"]}
                for r in records]

        def show() -> None:
            if not rows:
                console.print("no adapters registered (horse adapter train BRAND --clips DIR)")
                return
            table = Table(header_style="bold")
            for column in ("name", "sha256", "rank", "stage", "final loss", "registered"):
                table.add_column(column)
            for r in rows:
                loss = f"{r['final_loss']:.4f}" if r["final_loss"] is not None else "-"
                table.add_row(r["name"], r["sha256"][:12], str(r["rank"]), str(r["stage"]), loss, r["registered_at"][:19])
            console.print(table)

        return Outcome({"ok": True, "adapters": rows}, show)

    run_command(as_json, body, config, store)


@app.command("train")
def train(
    brand: Annotated[str, typer.Argument(help="brand id: the adapter registers as BRAND@N")],
    clips: Annotated[Path, typer.Option("--clips", help="folder of clips with <name>.txt captions, "
                                                        "or a .csv/.parquet clip list (columns clip, caption)")],
    steps: Annotated[int, typer.Option("--steps", help="training steps")] = 100,
    rank: Annotated[int, typer.Option("--rank", help="LoRA rank")] = 8,
    alpha: Annotated[float, typer.Option("--alpha", help="LoRA alpha (scale = alpha / rank)")] = 8.0,
    learning_rate: Annotated[float, typer.Option("--learning-rate", help="AdamW learning rate")] = 1e-3,
    workers: Annotated[int, typer.Option("--workers", help="Ray Train workers (one per GPU)")] = 1,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="steps between checkpoints "
                                                  "(in the store: an interrupted run resumes from the last)")] = 10,
    as_json: JsonOpt = False, config: ConfigOpt = None, store: StoreOpt = None, model: ModelOpt = None,
    ray_address: RayOpt = None,
) -> None:
    """Fine-tune a brand adapter on the Ray cluster (a Prefect flow run) and register it."""

    def body(settings) -> Outcome:
        from catalog import InvalidId
        from flows.adapter_training import TrainingInputError, list_clips, train_brand_adapter, training_config

        with invalid_input(InvalidId, TrainingInputError):  # checked before Prefect or Ray start
            from catalog import validate_id

            validate_id(brand, "brand")
            list_clips(clips)
            training_config(steps=steps, rank=rank, alpha=alpha, learning_rate=learning_rate,
                            checkpoint_every=checkpoint_every)
            if workers < 1:
                raise InvalidInput(f"--workers: must be at least 1, got {workers}")
        state = train_brand_adapter(brand=brand, clips=str(clips), steps=steps, rank=rank, alpha=alpha,
                                    learning_rate=learning_rate, workers=workers, checkpoint_every=checkpoint_every,
                                    store_url=store, model=model,
                                    config_file=str(config) if config else None, ray_address=ray_address,
                                    return_state=True)
        if not state.is_completed():
            try:
                state.result()
            except (InvalidId, TrainingInputError) as exc:
                raise InvalidInput(str(exc)) from None
        document = state.result()

        def show() -> None:
            console.print(f"registered [bold]{document['name']}[/bold] ({document['sha256'][:12]}): loss "
                          f"{document['initial_loss']:.4f} -> {document['final_loss']:.4f} over {document['steps']} steps "
                          f"on {len(document['clips'])} clips; loss curve {document['loss_curve_uri']}")

        return Outcome(document, show)

    run_command(as_json, body, config, store, model, ray_address)
