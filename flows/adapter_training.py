"""Brand-adapter training as a Prefect flow: brand clips with captions -> encodings (cached by
content, stored in the catalog: `horse_actors.training_data`) -> Ray Train on the cluster, its
checkpoints in the catalog (`horse_actors.training`) -> the loss curve as an image
artifact -> the adapter registered in the catalog as the brand's next version, with lineage from
its training clips.

Clips: a folder of videos, each with its caption beside it (`<name>.txt`), or a clip list (a
.csv or .parquet file with columns `clip` and `caption`; relative paths are relative to it). The
clips themselves are stored as blobs, so the adapter's record and lineage name them by content.
A run is named after its inputs (clips, training config, model): running the same training
again, after an interruption, resumes from its last checkpoint.
"""

from __future__ import annotations

import base64
import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.context import FlowRunContext

from catalog import Store, public_options, render_key, validate_id
from flows.nightly import flow_settings
from flows.report import artifact_key
from flows.settings import HorseSettings
from horse_actors.training import AdapterTrainingConfig

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm")


class TrainingInputError(ValueError):
    """Clips or options that cannot be trained on; the message names the file or field."""


@dataclass(frozen=True)
class ClipSource:
    path: Path
    caption: str


def list_clips(source: str | Path) -> list[ClipSource]:
    """The clips and captions a folder or a clip list names, checked to exist."""
    source = Path(source).expanduser()
    if source.is_dir():
        videos = sorted(p for p in source.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        missing = [p.name for p in videos if not p.with_suffix(".txt").is_file()]
        if missing:
            raise TrainingInputError(f"{source}: no caption file for {missing[0]} (expected {Path(missing[0]).stem}.txt)")
        clips = [ClipSource(p, p.with_suffix(".txt").read_text().strip()) for p in videos]
    elif source.is_file() and source.suffix.lower() in (".csv", ".parquet"):
        import pyarrow.csv
        import pyarrow.parquet

        try:
            table = (pyarrow.csv.read_csv(source) if source.suffix.lower() == ".csv" else pyarrow.parquet.read_table(source))
        except Exception as exc:  # noqa: BLE001 - pyarrow's own error types
            raise TrainingInputError(f"{source}: not a readable clip list ({exc})") from None
        if not {"clip", "caption"} <= set(table.column_names):
            raise TrainingInputError(f"{source}: a clip list needs the columns clip and caption")
        clips = [ClipSource((source.parent / str(r["clip"])).resolve(), str(r["caption"] or "").strip())
                 for r in table.select(["clip", "caption"]).to_pylist()]
        for number, clip in enumerate(clips, start=1):
            if not clip.path.is_file():
                raise TrainingInputError(f"{source}: row {number}, clip: {clip.path} does not exist")
    else:
        raise TrainingInputError(f"--clips {source}: neither a folder of clips nor a .csv/.parquet clip list")
    if not clips:
        raise TrainingInputError(f"{source}: no clips ({', '.join(VIDEO_SUFFIXES)} files)")
    empty = next((c for c in clips if not c.caption), None)
    if empty is not None:
        raise TrainingInputError(f"{source}: {empty.path.name} has an empty caption")
    return clips


def train_and_register(brand: str, clips: str | Path, settings: HorseSettings, config: AdapterTrainingConfig,
                       workers: int = 1, run_id: str | None = None, publish_artifact: bool = False) -> dict[str, Any]:
    """Train an adapter for `brand` on the clips and register it; returns the registration record
    with the training summary. Raises TrainingInputError / InvalidId on bad input (nothing trained)."""
    import uuid

    from horse_actors.cluster import connect
    from horse_actors.config import StoreTarget
    from horse_actors.training import train_adapter
    from horse_actors.training_data import ClipToEncode, stored_encodings
    from media.clips import ClipError
    from model import HappyHorsePipeline

    brand = validate_id(brand, "brand")
    sources = list_clips(clips)
    run_id = run_id or str(uuid.uuid4())
    store = Store(settings.store_url, settings.storage_options)
    resolved = settings.resolved_model()
    if resolved.profile != config.stage:
        config = dataclasses.replace(config, stage=resolved.profile)   # adapt the DiT the runs render with
    config = dataclasses.replace(config, model=resolved.checkpoint_dir or "tiny")
    pipe = (HappyHorsePipeline.tiny(config.tiny_seed) if resolved.checkpoint_dir is None
            else HappyHorsePipeline.from_pretrained(resolved.checkpoint_dir, stages=(config.stage,)))
    width, height = pipe.size_for("256p", "16:9")
    stored = [store.put_blob(str(s.path), ext=s.path.suffix.lstrip(".").lower()) for s in sources]
    try:  # encodings already in the catalog are read back: no clip decoded, no encoder called
        to_encode = [ClipToEncode(s.path, b.sha256, s.caption) for s, b in zip(sources, stored)]
        encodings = stored_encodings(store, pipe, to_encode, width, height, made_by={"brand": brand, "run_id": run_id})
    except ClipError as exc:
        raise TrainingInputError(str(exc)) from None

    # Named by its inputs: the same training again (on any node) resumes from its checkpoints.
    inputs = {"clips": [[b.sha256, s.caption] for b, s in zip(stored, sources)],
              "config": dataclasses.asdict(config), "workers": workers, "model": pipe.fingerprint}
    name = f"{brand}-{render_key(inputs)[:16]}"
    connect(settings.ray.address)
    with tempfile.TemporaryDirectory(prefix="horse-training-") as output:
        target = StoreTarget(store.url, public_options(settings.storage_options) or None)   # no credentials
        result = train_adapter([e.blob_uri for e in encodings], target, config, output, num_workers=workers,
                               use_gpu=not (settings.ray.cpu_mode or resolved.device == "cpu"), name=name)
        plot_png = result.files["plot"].read_bytes()
        history_json = result.files["history"].read_bytes()

    plot = store.put_blob(plot_png, ext="png")
    history = store.put_blob(history_json, ext="json")
    clip_records = [{"uri": b.uri, "sha256": b.sha256, "caption": s.caption, "encoding_uri": e.blob_uri}
                    for b, s, e in zip(stored, sources, encodings)]
    training = {"run": name, "steps": config.steps, "workers": workers, "initial_loss": result.initial_loss,
                "final_loss": result.final_loss, "resumed_from": result.resumed_from, "loss_curve_uri": plot.uri,
                "history_uri": history.uri, "checkpoints": result.checkpoints, "clips": clip_records,
                "model_fingerprint": pipe.fingerprint}
    record = store.adapters.register(brand, result.adapter.to_bytes(), result.adapter.config.to_dict(),
                                     run_id=run_id, training=training)
    store.lineage.complete(
        run_id=run_id, job_name="train_brand_adapter", job_type="JOB",
        inputs=[{"uri": c["uri"], "version": c["sha256"]} for c in clip_records]
        + [{"uri": resolved.checkpoint_dir or f"model/{resolved.name}", "version": pipe.fingerprint}],
        outputs=[{"uri": record["uri"], "sha256": record["sha256"], "bytes": record["bytes"]}],
        tags={"brand": brand, "adapter": record["name"], "steps": config.steps})
    if publish_artifact:
        from prefect.artifacts import create_image_artifact

        encoded = base64.b64encode(plot_png).decode()
        create_image_artifact(image_url=f"data:image/png;base64,{encoded}", key=artifact_key(brand, "adapter-loss"),
                              description=f"{record['name']}: training loss per step "
                                          f"({result.initial_loss:.4f} -> {result.final_loss:.4f} on fixed draws)")
    return {"ok": True, **{k: record[k] for k in ("brand", "version", "name", "sha256", "uri")}, **training}


@flow(name="train-brand-adapter", log_prints=True)
def train_brand_adapter(brand: str, clips: str, steps: int = 100, rank: int = 8, alpha: float = 8.0,
                        learning_rate: float = 1e-3, workers: int = 1, checkpoint_every: int = 10,
                        store_url: str | None = None, model: str | None = None, config_file: str | None = None,
                        ray_address: str | None = None) -> dict[str, Any]:
    """Fine-tune a brand adapter (LoRA) on clips with captions on the Ray cluster and register it
    as the brand's next version. Parameters carry paths and options, never clip data."""
    settings = flow_settings(config_file, store_url, model, ray_address)
    config = training_config(steps=steps, rank=rank, alpha=alpha, learning_rate=learning_rate,
                             checkpoint_every=min(checkpoint_every, steps))
    context = FlowRunContext.get()
    run_id = str(context.flow_run.id) if context and context.flow_run else None
    return train_and_register(brand, clips, settings, config, workers, run_id, publish_artifact=run_id is not None)


def training_config(**options: Any) -> AdapterTrainingConfig:
    """An AdapterTrainingConfig, its refusals as TrainingInputError naming the option."""
    try:
        return AdapterTrainingConfig(**options)
    except ValueError as exc:
        raise TrainingInputError(str(exc)) from None
