"""How the actor produces a clip: stage by stage, keeping each stage's result in the catalog.

A render runs base -> [sr] -> decode (`model.stages`). Before each try the actor looks for the
last stage result of its request that is already stored (one read of the stage records) and
starts from there; after each stage but the last it stores the result under its stage key
before going on. So:
- a promote (a 540p/1080p job whose 256p preview kept its base result) starts at sr;
- tail-only retry: an OOM ladder rung, or the pool's next attempt after the actor died, starts
  from the last stored result instead of from noise;
- every try's stages are reported (`StageReport.stages_run`), keyed by a try label: the attempt,
  then the ladder rungs it runs with ("1", "1+tiled_decode", "2").
A stage result is stored under the key of the request that made it: a rung that lowers the SR
tier stores a 540p sr result under the 540p key, never under the 1080p one.

The OOM ladder: after a GPU OOM the job is tried again with each rung of `ModelSpec.oom_ladder`
that applies, accumulating: "tiled_decode" decodes the video latent in tiles (diffusers VAE
tiling, only for this job, so other jobs stay bit-identical to a plain decode); "lower_sr" also
renders 1080p requests at 540p. OOM on the last rung is raised.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .jobs import RenderJob, is_oom, sorted_stages_run

log = logging.getLogger(__name__)

_LOWER_SR = {"1080p": "540p"}  # the "lower_sr" rung


@dataclass
class StageReport:
    """What one attempt of a job did, stage-wise; filled as it goes, so a failed attempt reports
    the stages it got to."""

    attempt: int
    stages_run: dict[str, list[str]] = field(default_factory=dict)  # try label -> stages started, in order
    resumed_from: str | None = None          # stage of the stored result the delivering try started from
    stage_results: dict[str, dict] = field(default_factory=dict)    # stage -> stored result used or made
    fallback: list[str] = field(default_factory=list)               # ladder rungs of the delivering try
    request: Any = None                      # the request the clip was rendered from
    timings: dict[str, float] = field(default_factory=dict)         # per stage, plus stage_store/stage_load


def stage_key(request, stage: str, stage_fingerprints, adapter_sha256: str | None = None,
              adapter_strength: float = 1.0) -> str:
    """The catalog key of a request's result up to `stage` with that brand adapter (torch-free:
    the planner uses it too)."""
    from catalog import render_key
    from model.stages import stage_key_inputs

    return render_key(stage_key_inputs(request, stage, stage_fingerprints, adapter_sha256, adapter_strength))


class StagedRenderer:
    """Renders jobs on `pipe`, keeping stage results in `store` (a catalog Store)."""

    def __init__(self, pipe, store, oom_ladder: tuple[str, ...], device: str):
        self.pipe, self.store, self.oom_ladder, self.device = pipe, store, oom_ladder, device

    def render(self, job: RenderJob, report: StageReport, should_stop: Callable[[], bool] | None = None,
               adapter: dict[str, Any] | None = None):
        """The clip of `job` (rendered from `report.request`, with `report.fallback` rungs);
        `adapter`: the pipe() arguments of the job's brand adapter, already on the model."""
        plan = [(None, job.request)]
        for rung in self.oom_ladder:
            request = self._apply_rung(rung, job.request)
            if request is not None:  # the rung applies to this request
                plan.append((rung, request))
        vae = self.pipe.video_codec.vae
        made: dict[str, Any] = {}  # stage key -> StageResult made by an earlier try in this process
        for i, (rung, request) in enumerate(plan):
            used = [r for r, _ in plan[1:i + 1]]  # rungs accumulate: lower SR keeps tiled decode
            label = "+".join([str(report.attempt), *used])
            tiled = "tiled_decode" in used
            try:
                if tiled:
                    vae.enable_tiling()
                clip = self._try(job, request, label, report, made, should_stop, adapter or {})
                report.fallback, report.request = used, request
                report.stages_run = sorted_stages_run(report.stages_run)
                return clip
            except Exception as exc:
                if not is_oom(exc) or i == len(plan) - 1:
                    report.stages_run = sorted_stages_run(report.stages_run)
                    raise
                log.warning("%s: GPU OOM (rung %s), trying %s from the last stored stage", job.render_key, rung,
                            plan[i + 1][0])
                self._free_gpu_memory()
            finally:
                if tiled:
                    vae.disable_tiling()
        raise AssertionError("the last rung re-raises")

    def _try(self, job: RenderJob, request, label: str, report: StageReport, made: dict, should_stop, adapter):
        """One try: start from the last stored stage result of `request`, run and keep the rest."""
        from model.stages import DECODE, STORED_STAGES, render_stages

        ran = report.stages_run.setdefault(label, [])
        stages = render_stages(request)
        keys = {s: stage_key(request, s, self.pipe.stage_fingerprints, job.adapter_sha256, job.adapter_strength)
                for s in stages if s in STORED_STAGES}
        timings = {"text_encode": 0.0, "denoise": 0.0, "sr": 0.0, "decode": 0.0, "stage_store": 0.0}
        t0 = time.perf_counter()
        result, report.stage_results = self._last_stored(job, request, report, keys, made)
        timings["stage_load"] = time.perf_counter() - t0
        report.resumed_from = result.stage if result is not None else None
        for stage in stages[stages.index(result.stage) + 1 if result is not None else 0:]:
            ran.append(stage)  # before it runs: a failure still shows where it got to
            if stage == DECODE:
                result = self.pipe(request, should_stop=should_stop, start=result, **adapter)
            else:
                result = self.pipe.render_until(request, stage, start=result, should_stop=should_stop, **adapter)
                made[keys[stage]] = result
            for name, seconds in result.timings.items():
                timings[name] += seconds
            if stage != DECODE:
                t0 = time.perf_counter()
                report.stage_results[stage] = self.keep(job, stage, keys[stage], result, label)
                timings["stage_store"] += time.perf_counter() - t0
        report.timings = timings
        return result

    def _last_stored(self, job: RenderJob, request, report: StageReport, keys: dict[str, str], made: dict):
        """(the last stage result of `request` that an earlier try made here or that the store
        has, or None; {stage: stored result} of it and the stages before it)."""
        order = list(keys)
        known = {s: ref for s, ref in report.stage_results.items() if keys.get(s) == ref["stage_key"]}
        for stage in reversed(order):
            if keys[stage] in made:
                return made[keys[stage]], {s: known[s] for s in order[:order.index(stage) + 1] if s in known}
        records = self.store.stage_results.existing(keys.values())
        found = {s: records[keys[s]] for s in order if keys[s] in records}
        for stage, record in found.items():  # what earlier attempts of this job left behind
            maker = record.made_by
            if maker.get("render_key") == job.render_key and _attempt_of(maker.get("try")) < report.attempt:
                earlier = report.stages_run.setdefault(maker["try"], [])
                if stage not in earlier:
                    earlier.append(stage)
        for stage in reversed(list(found)):
            result = self._load(job, request, found[stage])
            if result is not None:
                made[keys[stage]] = result
                return result, {s: _ref(found[s]) for s in order[:order.index(stage) + 1] if s in found}
        return None, {}

    def _load(self, job: RenderJob, request, record):
        """A stored stage result that can start `request` here, or None (gone, or unfit: that
        stage is rendered again, which is what the actor would do without it)."""
        from model import StageResult, StageResultError
        from model.stages import check_fits

        data = self.store.stage_results.load(record)
        if data is None:
            log.warning("%s: the %s stage result %s is gone from the store; rendering that stage again",
                        job.render_key, record.stage, record.blob_uri)
            return None
        try:
            result = StageResult.from_bytes(data)
            check_fits(result, request, self.pipe.stage_fingerprints, self.pipe.device.type,
                       job.adapter_sha256, job.adapter_strength)
            return result
        except StageResultError as exc:
            log.warning("%s: cannot start from the stored %s stage result (%s); rendering that stage again",
                        job.render_key, record.stage, exc)
            return None

    def keep(self, job: RenderJob, stage: str, key: str, result, label: str) -> dict:
        """Store a stage result (tests wrap this to end the actor right after a stage is kept)."""
        record = self.store.stage_results.put(
            key, stage, result.to_bytes(), retention=job.stage_retention,
            made_by={"render_key": job.render_key, "campaign_id": job.campaign_id, "shot_id": job.shot_id,
                     "variant": job.variant, "try": label})
        return _ref(record)

    @staticmethod
    def _apply_rung(rung: str, request):
        if rung == "tiled_decode":
            return request
        if rung == "lower_sr":
            lower = _LOWER_SR.get(request.resolution)
            return dataclasses.replace(request, resolution=lower) if lower else None
        raise ValueError(f"unknown OOM ladder rung {rung!r}")

    def _free_gpu_memory(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def _ref(record) -> dict:
    return {"stage_key": record.stage_key, "uri": record.blob_uri, "sha256": record.sha256, "bytes": record.bytes}


def _attempt_of(label: str | None) -> int:
    try:
        return int(str(label).split("+")[0])
    except ValueError:
        return 0
