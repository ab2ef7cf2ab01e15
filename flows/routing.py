"""Hybrid routing: which backend renders each shot, the API jobs of shots routed to a provider,
their quote, and what receipts and lineage say of an API render.

A shot goes to the backend its manifest row names (`backend`), else to that of the first
`routing.rules` entry whose tag it has, else to `routing.default`. "local" shots expand as always
(`flows.plan.expand_shot`). A shot routed to a provider expands into the very same variants
(languages x aspect ratios x takes, seeds, destinations), each mapped to the provider's request
(`horse_actors.backends.map_brief`); its render key hashes that request (backend, provider, model
id, every field sent: `ApiRequest.key_inputs`) and, with destinations, the delivery spec; with a
dialogue gate that hears its language, the gate's policy (flows.dialogue), as for a local clip.
A provider clip is never re-rolled after a QC or dialogue failure (each take is a paid task):
max_rerolls is 0 in both, and the failure is delivered on record.

horse_actors.backends is imported only when a shot is routed to a provider, so planning a
local-only manifest stays as light as before.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from catalog import render_key

if TYPE_CHECKING:
    from flows.manifest import Shot
    from flows.plan import Filters, ModelInfo, Plan, PlannedJob
    from flows.settings import RoutingSettings
    from horse_actors import RenderOutcome

LOCAL = "local"
TOKEN_FPS = 24  # Seedance bills W x H x 24 fps x seconds / 1024 tokens (horse_actors.backends.api)


@dataclass(frozen=True)
class Routes:
    """The routing of one run: default backend, (tag, backend) rules in order, provider specs."""

    default: str = LOCAL
    rules: tuple[tuple[str, str], ...] = ()
    providers: Mapping[str, Any] = field(default_factory=dict)  # name -> horse_actors.backends.ProviderSpec

    @classmethod
    def from_settings(cls, routing: "RoutingSettings") -> "Routes":
        return cls(routing.default, tuple((r.tag, r.backend) for r in routing.rules), routing.specs())

    def backend_for(self, shot: "Shot") -> str:
        if shot.backend:
            return shot.backend
        if not self.rules:  # most runs: every shot on the default backend
            return self.default
        return next((backend for tag, backend in self.rules if tag in shot.tags), self.default)

    def provider(self, backend: str) -> Any:
        if backend not in self.providers:
            raise ValueError(f"backend: {backend!r} is not configured (routing.providers)")
        return self.providers[backend]


def api_variants(shot: "Shot", spec: Any, model: "ModelInfo", filters: "Filters",
                 destinations: Any = None, dialogue: Any = None) -> list["PlannedJob"]:
    """Every variant of `shot` as a job for the provider of `spec` (a ProviderSpec); `dialogue`:
    the run's gate (flows.dialogue.DialoguePolicy; None: no gate)."""
    from flows.plan import PlanError, expand_shot
    from horse_actors.backends import map_brief
    from model.errors import InvalidRequest

    if shot.reference_audio_uri:
        raise PlanError(f"reference_audio_uri: backend {spec.name} takes no reference audio")
    try:
        image = Path(shot.reference_image_uri).read_bytes() if shot.reference_image_uri else None
    except OSError as exc:  # validated at intake, gone since
        raise PlanError(f"reference file cannot be read: {exc.filename} ({exc.strerror})") from None
    jobs = []
    for job in expand_shot(shot, model, filters, destinations, dialogue):  # variants, seeds, destinations, checks
        lines = [line.model_dump() for line in shot.lines_for(job.language)] if job.language else []
        try:
            request = map_brief(spec, scene=shot.scene, dialogue=lines, background_sound=shot.background_sound,
                                aspect_ratio=job.aspect_ratio, resolution=shot.resolution,
                                seconds=shot.duration_s, seed=job.seed, image=image)
        except InvalidRequest as exc:
            raise PlanError(f"backend {spec.name}: {exc}") from None
        inputs = request.key_inputs()
        if job.destinations:
            inputs["delivery"] = {**job.key_inputs["delivery"], "max_rerolls": 0}
        check, gate_key = job.dialogue, job.dialogue_key
        if check is not None:  # heard on the provider actor, never re-rolled
            check = dataclasses.replace(check, max_rerolls=0)
        if gate_key is not None:  # a key that promises a checked clip: the backend hears it
            gate_key = inputs["dialogue"] = {**gate_key, "max_rerolls": 0}
        width, height = clip_size(request.ratio, request.resolution)
        jobs.append(dataclasses.replace(
            job, backend=spec.name, api_request=request, resolution=request.resolution, seconds=request.seconds,
            width=width, height=height, prompt=request.prompt, render_key=render_key(inputs), api_key_inputs=inputs,
            max_rerolls=0, dialogue=check, dialogue_key=gate_key))
    return jobs


def clip_size(ratio: str, resolution: str) -> tuple[int, int]:
    """The nominal size of a provider clip: the tier's height on the short side."""
    w, h = (int(x) for x in ratio.split(":"))
    short = int(resolution.rstrip("p"))
    return (round(short * w / h / 2) * 2, short) if w >= h else (short, round(short * h / w / 2) * 2)


def api_quote(plan: "Plan", routes: Routes, api_todo: list | None = None) -> dict[str, dict[str, Any]]:
    """Per provider, for the clips still to render: how many, the configured price per clip, the
    estimated tokens (the Seedance formula on the nominal size) and what they cost (tokens at the
    configured token price when there is one, else clips at the price per clip; None: no price).
    `api_todo`: the plan's API jobs to render when the caller has them already (None: found here)."""
    todo = [job for job in plan.todo if job.backend != LOCAL] if api_todo is None else api_todo
    quote = {}
    for name, clips in Counter(job.backend for job in todo).items():
        spec = routes.providers[name]
        tokens = sum(clip_tokens(j) for j in todo if j.backend == name)
        if spec.price_per_million_tokens is not None:
            usd = tokens * spec.price_per_million_tokens / 1e6
        else:
            usd = None if spec.price_per_clip is None else clips * spec.price_per_clip
        quote[name] = {"model": spec.model, "clips": clips, "price_per_clip": spec.price_per_clip,
                       "estimated_tokens": tokens, "usd": None if usd is None else round(usd, 2)}
    return quote


def clip_tokens(job: "PlannedJob") -> int:
    """A provider clip's estimated tokens: the Seedance formula on its nominal size."""
    return round(job.width * job.height * TOKEN_FPS * job.seconds / 1024)


def clip_usd(job: "PlannedJob", spec: Any) -> float | None:
    """What one API clip is quoted at (USD): its estimated tokens at the token price when there is
    one, else the price per clip; None: `spec` (a ProviderSpec) has no price."""
    if spec.price_per_million_tokens is not None:
        return clip_tokens(job) * spec.price_per_million_tokens / 1e6
    return spec.price_per_clip


def api_render_job(job: "PlannedJob") -> Any:
    """The RenderJob of a planned API job: its request as planned; QC and the dialogue gate as for
    a local clip, never a re-roll."""
    from horse_actors import Delivery, RenderJob

    delivery = Delivery(job.destinations, 0, job.expects_speech) if job.destinations else None
    return RenderJob(job.render_key, job.api_request, job.campaign_id, job.shot_id, job.variant, delivery=delivery,
                     dialogue=job.dialogue)


def plan_row(job: "PlannedJob") -> dict[str, Any]:
    """What the dry run shows of a job's route: its backend and what the provider could not do as asked."""
    if job.api_request is None:
        return {"backend": LOCAL}
    return {"backend": job.backend, "provider_model": job.api_request.model,
            "adjustments": {k: dict(v) for k, v in job.api_request.adjustments.items()}}


def version_fields(job: "PlannedJob") -> dict[str, Any]:
    """What a version entry adds for a clip a provider renders: which provider and model."""
    if job.api_request is None:
        return {}
    return {"backend": job.backend, "provider_model": job.api_request.model}


def receipt_fields(job: "PlannedJob", outcome: "RenderOutcome") -> dict[str, Any]:
    """What a receipt adds for an API render: the provider, its model and task, the usage and cost.
    Its wall time is no GPU time (it would skew the GPU quote), so gpu_seconds is None."""
    if job.api_request is None:
        return {}
    return {"backend": job.backend, "provider_model": job.api_request.model,
            "model_fingerprint": f"{job.backend}:{job.api_request.model}",
            "provider_task_id": getattr(outcome, "task_id", None), "usage": getattr(outcome, "usage", None) or None,
            "cost_usd": getattr(outcome, "cost_usd", None), "gpu_seconds": None,
            "adjustments": {k: dict(v) for k, v in job.api_request.adjustments.items()} or None}


def lineage_model(job: "PlannedJob") -> dict[str, str]:
    """The model input of an API render's lineage event: provider and model id."""
    model = job.api_request.model
    return {"uri": f"provider/{job.backend}/{model}", "version": model}
