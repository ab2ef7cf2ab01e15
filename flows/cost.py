"""What a plan will cost before it renders: device-seconds per stage, learned from the catalog's
history, and how long the cluster needs for them (DESIGN §12 "cost model, budgets, priorities").

A cost key names a stage at the tier it works at:
    base                 text encoding and the denoising loop (always at 256p)
    sr_540p, sr_1080p    latent super-resolution of a 540p or 1080p render
    decode_<tier>        the VAE decode of the output
    encode_<tier>        the mp4 encode (on the actor, holding its GPU)
    qc_<tier>            delivery QC and the masters (jobs with destinations only)
A full render runs base, [sr], decode, encode, [qc] at its tier; a preview runs base, decode_256p and
encode_256p; a promote finishes a stored preview: sr, decode, encode and [qc] at its tier.

Rates are device-seconds per clip-second, learned from the receipts' per-stage device seconds
(`horse_actors.jobs.stage_device_seconds`) of ok renders with the same model fingerprint, sampler
profile and device type: renders of another model, profile or device say nothing about this one
and are ignored. A stage without such history is quoted from `cost.configured` (the published
H100 timings). Each rate has a band: the range of its history, or ± `cost.configured.uncertainty`.
No torch and no Ray here (Ray only when asked for a configured cluster's GPUs).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc

from catalog import Store
from flows.plan import Plan, PlannedJob
from flows.settings import ConfigError, CostSettings, HorseSettings
from model.geometry import BASE_TIER, RESOLUTIONS, SR_STAGE

COST_KEYS = ("base", *(f"sr_{tier}" for tier in SR_STAGE),
             *(f"{stage}_{tier}" for stage in ("decode", "encode", "qc") for tier in RESOLUTIONS))
HISTORY_COLUMNS = ["model_fingerprint", "profile", "device_type", "device_seconds", "resolution",
                   "rendered_resolution", "duration_s", "created_at"]


def cost_keys(kind: str, resolution: str, qc: bool = False) -> tuple[str, ...]:
    """The cost keys a job of this kind (preview, render, promote) at this tier runs; `qc`: it has
    delivery destinations (QC and masters run after its encode)."""
    if kind == "preview":
        return ("base", f"decode_{BASE_TIER}", f"encode_{BASE_TIER}")
    finish = ((f"sr_{resolution}",) if resolution in SR_STAGE else ()) + tuple(
        f"{stage}_{resolution}" for stage in ("decode", "encode", *(("qc",) if qc else ())))
    return finish if kind == "promote" else ("base", *finish)


def cost_key(stage: str, tier: str) -> str:
    """The key of a recorded stage (`stage_device_seconds` names) of a render delivered at `tier`."""
    return stage if stage == "base" or stage.startswith("sr_") else f"{stage}_{tier}"


@dataclass(frozen=True)
class Rate:
    """Device-seconds per clip-second of one stage; `samples` renders it was learned from (0: the
    configured figure)."""

    mean: float
    low: float
    high: float
    samples: int

    @property
    def basis(self) -> str:
        return "history" if self.samples else "configured"


@dataclass
class CostModel:
    """Rates of one model (fingerprint, profile) on one device type."""

    fingerprint: str
    profile: str
    device_type: str | None  # None: nothing known about where it will run
    rates: dict[str, Rate]  # cost key -> rate; stages with no figure at all are absent
    configured: str  # what the configured figures are, for the quote's basis

    def per_clip_second(self, kind: str, resolution: str, qc: bool = False) -> tuple[float, float, float]:
        """(mean, low, high) device-seconds per clip-second of one job."""
        rates = [self.rates[key] for key in cost_keys(kind, resolution, qc) if key in self.rates]
        return sum(r.mean for r in rates), sum(r.low for r in rates), sum(r.high for r in rates)

    def job_seconds(self, job: PlannedJob) -> float:
        return job.seconds * self.per_clip_second(job.kind, job.resolution, bool(job.destinations))[0]


def history(store: Store, fingerprint: str, profile: str) -> pa.Table:
    """Ok renders of this model and profile that recorded per-stage device seconds, newest first."""
    table = store.index.to_arrow(status="ok", columns=HISTORY_COLUMNS)
    mask = pc.and_(pc.and_(pc.equal(table["model_fingerprint"], fingerprint), pc.equal(table["profile"], profile)),
                   pc.is_valid(table["device_seconds"]))
    table = table.filter(mask)
    return table.take(pc.sort_indices(table, [("created_at", "descending")]))


def learn_rates(rows: list[dict]) -> dict[str, Rate]:
    """Rates per cost key from history rows (device_seconds JSON, tier, clip length)."""
    samples: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        tier = row["rendered_resolution"] or row["resolution"]
        if not row["duration_s"] or not tier:
            continue
        for stage, seconds in json.loads(row["device_seconds"]).items():
            samples[cost_key(stage, tier)].append(seconds / row["duration_s"])
    return {key: Rate(sum(v) / len(v), min(v), max(v), len(v)) for key, v in samples.items()}


def configured_rates(cost: CostSettings) -> dict[str, Rate]:
    figures, band = cost.configured, cost.configured.uncertainty
    return {key: Rate(seconds / figures.clip_seconds, seconds / figures.clip_seconds * (1 - band),
                      seconds / figures.clip_seconds * (1 + band), 0) for key, seconds in figures.seconds.items()}


def renders_on_cpu(settings: HorseSettings) -> bool:
    return settings.ray.cpu_mode or settings.resolved_model().device == "cpu"


def cost_model(store: Store, settings: HorseSettings, fingerprint: str, device_type: str | None = None) -> CostModel:
    """The rates to quote with: history of this fingerprint, profile and device type where there is
    some, the configured figures elsewhere. The device type is `device_type`, else
    `cost.device_type`, else "cpu" for a model that renders on the CPU, else the device of this
    model's newest render in the index (else unknown: configured figures only)."""
    profile = settings.resolved_model().profile
    device_type = device_type or settings.cost.device_type or ("cpu" if renders_on_cpu(settings) else None)
    past = history(store, fingerprint, profile)
    if device_type is None and past.num_rows:
        device_type = past["device_type"][0].as_py()
    rows = past.filter(pc.equal(past["device_type"], device_type)) if device_type else past.slice(0, 0)
    rows = rows.slice(0, settings.cost.history_renders).select(["device_seconds", "resolution", "rendered_resolution",
                                                                "duration_s"])
    figures = settings.cost.configured
    return CostModel(fingerprint, profile, device_type, {**configured_rates(settings.cost), **learn_rates(rows.to_pylist())},
                     f"the configured {figures.device_type} figures ({figures.source})")


@dataclass
class StageQuote:
    key: str
    clip_seconds: float
    rate: Rate

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.key, "clip_seconds": round(self.clip_seconds, 2), "basis": self.rate.basis,
                "samples": self.rate.samples, "rate": round(self.rate.mean, 4),
                "gpu_seconds": round(self.clip_seconds * self.rate.mean, 1),
                "gpu_seconds_low": round(self.clip_seconds * self.rate.low, 1),
                "gpu_seconds_high": round(self.clip_seconds * self.rate.high, 1)}


@dataclass
class Quote:
    """Device-seconds of a plan's to-do jobs per stage, and what the alternatives would cost."""

    model: CostModel
    stages: list[StageQuote]
    by_campaign: dict[str, float]  # to-do device-seconds per campaign
    cached_gpu_seconds: float  # what the catalog already has, at the same rates
    previews: tuple[int, float]  # (jobs, device-seconds): every to-do take as a 256p preview
    promotes: tuple[int, float]  # one take per to-do variant promoted to its tier
    job_seconds: dict[str, float] = field(repr=False)  # render_key -> device-seconds, for the budget guard

    @property
    def gpu_seconds(self) -> float:
        return sum(s.clip_seconds * s.rate.mean for s in self.stages)

    @property
    def band(self) -> tuple[float, float]:
        return (sum(s.clip_seconds * s.rate.low for s in self.stages),
                sum(s.clip_seconds * s.rate.high for s in self.stages))

    @property
    def cached_share(self) -> float:
        total = self.cached_gpu_seconds + self.gpu_seconds
        return self.cached_gpu_seconds / total if total else 0.0

    @property
    def basis(self) -> str:
        learned = sorted(s.key for s in self.stages if s.rate.samples)
        configured = sorted(s.key for s in self.stages if not s.rate.samples)
        parts = []
        if learned:
            most = max(s.rate.samples for s in self.stages)
            parts.append(f"from up to {most} past renders of this model on {self.model.device_type} "
                         f"({', '.join(learned)})")
        if configured:
            parts.append(f"from configuration ({', '.join(configured)}): {self.model.configured}")
        return "; ".join(parts) or "nothing to render"

    def as_dict(self) -> dict[str, Any]:
        low, high = self.band
        return {"model_fingerprint": self.model.fingerprint, "profile": self.model.profile,
                "device_type": self.model.device_type, "gpu_seconds": round(self.gpu_seconds, 1),
                "gpu_seconds_low": round(low, 1), "gpu_seconds_high": round(high, 1),
                "gpu_hours": round(self.gpu_seconds / 3600, 4), "basis": self.basis,
                "cached_share": round(self.cached_share, 4),
                "stages": [s.as_dict() for s in self.stages],
                "by_campaign": {c: round(s, 1) for c, s in sorted(self.by_campaign.items())},
                "previews": {"jobs": self.previews[0], "gpu_seconds": round(self.previews[1], 1)},
                "promotes": {"jobs": self.promotes[0], "gpu_seconds": round(self.promotes[1], 1)}}


def quote_plan(plan: Plan, model: CostModel) -> Quote:
    """Quote the plan's to-do jobs per stage (one pass over the jobs: rates depend only on the
    kind, tier and whether QC runs, so clip-seconds are summed per those first)."""
    todo: dict[tuple[str, str, bool], float] = defaultdict(float)
    cached: dict[tuple[str, str, bool], float] = defaultdict(float)
    by_campaign: dict[str, float] = defaultdict(float)
    # one take per (campaign, shot, language, aspect): its tier and QC, clip seconds
    promoted: dict[tuple, tuple[tuple[str, bool], float]] = {}
    job_seconds = {}
    # per (kind, tier, QC): its rate and, for a render a promote could finish, the promote's (tier, QC)
    rates: dict[tuple[str, str, bool], tuple[float, tuple[str, bool] | None]] = {}
    in_cache = plan.cached  # 400k jobs: names bound once, each field read once per job
    for job in plan.jobs:
        if job.backend != "local":  # an API provider's clip: money per clip (flows.routing.api_quote)
            continue
        kind_tier = (job.kind, job.resolution, bool(job.destinations))
        key, clip_seconds_of_job = job.render_key, job.seconds
        if key in in_cache:
            cached[kind_tier] += clip_seconds_of_job
            continue
        todo[kind_tier] += clip_seconds_of_job
        found = rates.get(kind_tier)
        if found is None:
            found = rates[kind_tier] = (model.per_clip_second(*kind_tier)[0],
                                        kind_tier[1:] if kind_tier[0] == "render" and kind_tier[1] in SR_STAGE else None)
        seconds = job_seconds[key] = clip_seconds_of_job * found[0]
        by_campaign[job.campaign_id] += seconds
        if found[1] is not None:
            promoted[(job.campaign_id, job.shot_id, job.language, job.aspect_ratio)] = (found[1], clip_seconds_of_job)
    clip_seconds: dict[str, float] = defaultdict(float)
    for kind_tier, seconds in todo.items():
        for key in cost_keys(*kind_tier):
            clip_seconds[key] += seconds
    stages = [StageQuote(key, clip_seconds[key], model.rates[key]) for key in COST_KEYS
              if clip_seconds.get(key) and key in model.rates]
    cached_total = sum(s * model.per_clip_second(*kt)[0] for kt, s in cached.items())
    preview_rate = model.per_clip_second("preview", BASE_TIER)[0]
    previews = (len(job_seconds), preview_rate * sum(todo.values()))
    promote_seconds: dict[tuple[str, bool], float] = defaultdict(float)
    for tier_qc, seconds in promoted.values():
        promote_seconds[tier_qc] += seconds
    promotes = (len(promoted),
                sum(s * model.per_clip_second("promote", *tier_qc)[0] for tier_qc, s in promote_seconds.items()))
    return Quote(model, stages, dict(by_campaign), cached_total, previews, promotes, job_seconds)


# ---- time to finish ----------------------------------------------------------------------------


def render_slots(settings: HorseSettings, gpus: float | None = None) -> tuple[int | None, str]:
    """(actors rendering side by side, where that number comes from): `gpus` (a what-if), else a
    configured Ray cluster's GPUs, else the configured actor count; None when unknown."""
    ray = settings.ray
    if gpus is not None:
        return max(1, int(gpus // (ray.gpus_per_actor or 1))), f"--gpus {gpus:g}"
    if renders_on_cpu(settings):
        return ray.num_actors or 1, "CPU actors (ray.num_actors)"
    if ray.address:
        import ray as ray_module

        from horse_actors.cluster import connect

        try:
            found = connect(ray.address)["gpus"]
        finally:
            ray_module.shutdown()
        slots = int(found // (ray.gpus_per_actor or 1))
        return (min(slots, ray.num_actors) if ray.num_actors else slots), f"Ray cluster at {ray.address} ({found:g} GPUs)"
    if ray.num_actors:
        return ray.num_actors, "ray.num_actors"
    return None, "unknown: pass --gpus N or set ray.address"


def deadline(by: str, timezone: str, now: datetime) -> datetime:
    """`by` as a time of day ("07:00": its next occurrence) or an ISO 8601 date and time, in the
    schedule's timezone."""
    zone = ZoneInfo(timezone)
    try:
        at = time.fromisoformat(by)
    except ValueError:
        try:
            when = datetime.fromisoformat(by)
        except ValueError:
            raise ConfigError(f"--by {by!r}: expected HH:MM or an ISO 8601 date and time") from None
        return when if when.tzinfo else when.replace(tzinfo=zone)
    local = now.astimezone(zone)
    when = datetime.combine(local.date(), at, tzinfo=zone)
    return when if when > local else datetime.combine(local.date() + timedelta(days=1), at, tzinfo=zone)


def time_to_finish(quote: Quote, slots: int | None, source: str, timezone: str, by: str | None,
                   now: datetime) -> dict[str, Any]:
    """How long the to-do jobs take on `slots` actors (perfect packing: a lower bound for few long
    jobs), when they finish, and whether that is before `by`."""
    out: dict[str, Any] = {"slots": slots, "slots_from": source, "timezone": timezone}
    if by is not None:
        out["by"] = deadline(by, timezone, now).isoformat(timespec="minutes")
    if not slots:
        return out
    low, high = quote.band
    hours = {"hours": quote.gpu_seconds / slots / 3600, "hours_low": low / slots / 3600, "hours_high": high / slots / 3600}
    local = now.astimezone(ZoneInfo(timezone))
    finish, finish_high = local + timedelta(hours=hours["hours"]), local + timedelta(hours=hours["hours_high"])
    out |= {k: round(v, 4) for k, v in hours.items()}
    out |= {"finish_at": finish.isoformat(timespec="minutes"), "finish_at_high": finish_high.isoformat(timespec="minutes")}
    if by is not None:
        limit = deadline(by, timezone, now)
        out |= {"fits": finish <= limit, "fits_high": finish_high <= limit}
    return out
