"""Between the plan, the pool and the catalog: model facts for planning, pool settings, render
jobs built from planned variants, and the records (receipts, version entries, contact sheets)
made from what the pool returns."""

from __future__ import annotations

from typing import Any

from catalog import Store, public_options
from flows.plan import ModelInfo, Plan, PlannedJob
from flows.settings import HorseSettings
from horse_actors import ModelSpec, PoolConfig, RenderJob, RenderOutcome, Scheduling, StoreTarget
from media import contact_sheet, load_audio, load_image

# ---- model info for planning ---------------------------------------------------------------

def model_info(settings: HorseSettings) -> ModelInfo:
    """Fingerprint and output sizes of the configured model, without torch or any weights (file
    digests of a checkpoint are cached per machine, so this is cheap after the first time)."""
    from model import describe_checkpoint, describe_tiny

    resolved = settings.resolved_model()
    if resolved.checkpoint_dir is None:
        described = describe_tiny()
    else:
        described = describe_checkpoint(resolved.checkpoint_dir)
    return ModelInfo(described.fingerprint, resolved.profile, described.size_for)


def pool_config(settings: HorseSettings) -> PoolConfig:
    resolved = settings.resolved_model()
    ray = settings.ray
    return PoolConfig(
        model=ModelSpec(
            name=resolved.checkpoint_dir or "tiny",
            device=None if resolved.device == "auto" else resolved.device,
            dtype=resolved.dtype,
            offload=resolved.offload,
        ),
        # Credentials never travel as Ray arguments: actors read them from their environment.
        store=StoreTarget(settings.store_url, public_options(settings.storage_options) or None),
        scheduling=Scheduling(
            ray_address=ray.address,
            num_actors=ray.num_actors,
            gpus_per_actor=ray.gpus_per_actor,
            cpus_per_actor=ray.cpus_per_actor,
            cpu_mode=ray.cpu_mode or resolved.device == "cpu",
            max_in_flight_per_actor=ray.max_in_flight_per_actor,
            job_deadline_s=ray.job_deadline_s,
            max_retries=ray.max_retries,
        ),
    )


# ---- catalog bookkeeping -------------------------------------------------------------------


def to_render_job(job: PlannedJob, model_fingerprint: str) -> RenderJob:
    from model import RenderRequest

    request = RenderRequest(
        prompt=job.prompt,
        resolution=job.resolution,
        aspect_ratio=job.aspect_ratio,
        seconds=job.seconds,
        seed=job.seed,
        profile=job.key_inputs["profile"],
        image=load_image(job.image_path) if job.image_path else None,
        **_load_audio(job.audio_path),
    )
    metadata = {
        "horse_render_key": job.render_key,
        "horse_campaign": job.campaign_id,
        "horse_shot": job.shot_id,
        "horse_variant": job.variant,
        "horse_seed": str(job.seed),
        "horse_model_fingerprint": model_fingerprint,
        "language": job.language,
    }
    return RenderJob(job.render_key, request, job.campaign_id, job.shot_id, job.variant, metadata)


def _load_audio(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    audio, rate = load_audio(path)
    return {"audio": audio, "audio_sample_rate": rate}


def receipt_for(job: PlannedJob, outcome: RenderOutcome, run_id: str, model_fingerprint: str) -> dict[str, Any]:
    return {
        **job.entry(),
        "status": "ok" if outcome.ok else "failed",
        "blob_uri": outcome.blob_uri,
        "sha256": outcome.sha256,
        "bytes": outcome.bytes,
        "poster_uri": outcome.poster_uri,
        "error_class": outcome.error_class,
        "error_message": outcome.error_message,
        "model_fingerprint": model_fingerprint,
        "timings": outcome.timings,
        "gpu_seconds": outcome.duration_s,  # actor wall time: what the shot cost in GPU time
        "duration_s": job.seconds,  # clip length, for GPU-seconds-per-clip-second quotes
        "actor_id": outcome.actor_id,
        "node_id": outcome.node_id,
        "attempt": outcome.attempt,
        "width": outcome.width,
        "height": outcome.height,
        "frames": outcome.frames,
        "run_id": run_id,
    }


def version_entries(plan: Plan, outcomes: dict[str, tuple[PlannedJob, RenderOutcome]]) -> dict[str, list[dict]]:
    """Version entries per campaign: every planned variant with its file or its failure."""
    per_campaign: dict[str, list[dict]] = {}
    for job in plan.jobs:
        entry = job.entry()
        cached = plan.cached.get(job.render_key)
        if cached is not None:
            entry |= {"status": "ok", "blob_uri": cached["blob_uri"], "sha256": cached["sha256"], "poster_uri": cached.get("poster_uri")}
        elif job.render_key in outcomes:
            outcome = outcomes[job.render_key][1]
            entry |= {"status": "ok" if outcome.ok else "failed", "blob_uri": outcome.blob_uri, "sha256": outcome.sha256,
                      "poster_uri": outcome.poster_uri, "error_class": outcome.error_class,
                      "error_message": outcome.error_message}
        else:  # the run was cancelled before this variant was rendered
            entry |= {"status": "failed", "blob_uri": None, "sha256": None, "error_class": "NotRendered"}
        per_campaign.setdefault(job.campaign_id, []).append(entry)
    return per_campaign


def merge_with_previous(store: Store, campaign_id: str, entries: list[dict]) -> list[dict]:
    """A backfill adds variants: the new version keeps every variant of the previous one."""
    latest = store.versions.latest(campaign_id)
    if latest is None:
        return entries
    previous = store.versions.read(campaign_id, latest)["entries"]
    merged = {(e["shot_id"], e["variant"]): e for e in previous}
    merged.update({(e["shot_id"], e["variant"]): e for e in entries})
    return list(merged.values())


def publish_contact_sheet(store: Store, entries: list[dict]) -> tuple[str | None, bytes | None]:
    posters = []
    for entry in entries[:48]:
        if entry.get("status") == "ok" and entry.get("poster_uri"):
            with store.open_blob(entry["poster_uri"]) as f:
                posters.append((f"{entry['shot_id']}\n{entry['variant']}", f.read()))
    if not posters:
        return None, None
    jpeg = contact_sheet(posters)
    return store.put_blob(jpeg, ext="jpg").uri, jpeg

