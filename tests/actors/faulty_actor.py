"""A RenderActor with planned faults, for pool tests only: production actors carry no fault hooks.

`FaultyRenderActor.planned(...)` returns a subclass with the plan baked in; hand it to
`RenderPool(config, actor_class=...)`. Ray workers cannot import this module (tests/ is not a
package on their path), so it is registered with Ray's cloudpickle to travel by value.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import ray.cloudpickle
import torch

from horse_actors import RenderActor


class FaultyRenderActor(RenderActor):
    hang_keys: frozenset[str] = frozenset()       # these jobs hang on attempt 1, like a stuck kernel
    oom_at: dict[str, frozenset[str]] = {}        # render_key -> stages that raise torch's OOM error
    oom_once: dict[str, frozenset[str]] = {}      # render_key -> stages that raise it the first time they run
    die_after: dict[str, str] = {}                # render_key -> stage: the process exits on attempt 1 once
                                                  # that stage's result is stored
    render_log: str | None = None                 # file that gets one line per render started
    stage_log: str | None = None                  # file that gets one line per pipeline stage started
    black_seeds: frozenset[int] = frozenset()     # clips rendered with these seeds come out all black
    seed_log: str | None = None                   # file that gets one line per clip rendered: key, seed
    speech: dict[int, np.ndarray] = {}            # seed -> 16 kHz mono speech that replaces the clip's sound

    @classmethod
    def planned(cls, *, hang_keys=(), oom_at: dict[str, set[str]] | None = None,
                oom_once: dict[str, set[str]] | None = None, die_after: dict[str, str] | None = None,
                render_log: str | None = None, stage_log: str | None = None, black_seeds=(),
                seed_log: str | None = None, speech: dict[int, np.ndarray] | None = None) -> type["FaultyRenderActor"]:
        """`oom_at` stages: a DiT stage ("distill", "540p_sr", "1080p_sr", ...), which raises
        whenever it runs for that job, or "decode", which raises unless the VAE decodes in tiles.
        `oom_once`: the same stages, raising only the first time they run for that job.
        `black_seeds`: the model's picture is blanked for these seeds (a defect delivery QC must catch).
        `speech`: the clip's soundtrack becomes this speech (from 0.1 s, on both channels) for these seeds:
        what the dialogue gate hears."""
        plan = {"hang_keys": frozenset(hang_keys), "render_log": render_log, "stage_log": stage_log,
                "oom_at": {key: frozenset(stages) for key, stages in (oom_at or {}).items()},
                "oom_once": {key: frozenset(stages) for key, stages in (oom_once or {}).items()},
                "die_after": dict(die_after or {}), "black_seeds": frozenset(black_seeds), "seed_log": seed_log,
                "speech": dict(speech or {})}
        return type("PlannedFaultyRenderActor", (cls,), plan)

    def __init__(self, *args, **kwargs):
        self._call = threading.local()     # overlapping calls (Scheduling.overlap) each see their own job
        super().__init__(*args, **kwargs)  # loads and warms up without faults
        self._raised = set()
        for stage, dit in self.pipe.dits.items():
            dit.forward = self._oom_when(stage, dit.forward, lambda: True)
        vae = self.pipe.video_codec.vae
        vae.decode = self._oom_when("decode", vae.decode, lambda: not vae.use_tiling)
        for stage, method in (("base", "_base"), ("sr", "_super_resolve"), ("decode", "_decode")):
            setattr(self.pipe, method, self._logged(stage, getattr(self.pipe, method)))
        self.staged.keep = self._die_after_keeping(self.staged.keep)
        self.staged.render = self._blacked(self.staged.render)

    @property
    def _job(self):
        return getattr(self._call, "job", None)

    @property
    def _attempt(self):
        return getattr(self._call, "attempt", None)

    def _oom_when(self, stage: str, forward, applies):
        def guarded(*args, **kwargs):
            if self._job is not None and applies():
                key = self._job.render_key
                once = stage in self.oom_once.get(key, ()) and (key, stage) not in self._raised
                if once or stage in self.oom_at.get(key, ()):
                    self._raised.add((key, stage))
                    raise torch.cuda.OutOfMemoryError(f"CUDA out of memory in {stage} (planned by the test)")
            return forward(*args, **kwargs)

        return guarded

    def _logged(self, stage: str, run_stage):
        def logged(*args, **kwargs):
            if self.stage_log and self._job is not None:
                with open(self.stage_log, "a") as log:
                    log.write(f"{self._job.render_key} {self._attempt} {stage}\n")
            return run_stage(*args, **kwargs)

        return logged

    def _die_after_keeping(self, keep):
        def keep_then_maybe_die(job, stage, *args, **kwargs):
            stored = keep(job, stage, *args, **kwargs)
            if self._attempt == 1 and self.die_after.get(job.render_key) == stage:
                os._exit(1)  # like a machine lost right after the stage result reached the store
            return stored

        return keep_then_maybe_die

    def _blacked(self, render):
        """The staged renderer's clip, blanked or given speech for the planned seeds."""
        def render_then_fault(job, report, *args, **kwargs):
            clip = render(job, report, *args, **kwargs)
            seed = report.request.seed
            if self.seed_log:
                with open(self.seed_log, "a") as log:
                    log.write(f"{job.render_key} {seed}\n")
            if seed in self.black_seeds:
                clip.frames = np.zeros_like(clip.frames)
            if seed in self.speech:
                from scipy.signal import resample_poly

                said = resample_poly(self.speech[seed], clip.sample_rate, 16000).astype(np.float32)
                track = np.zeros(clip.audio.shape[1], np.float32)
                start = int(0.1 * clip.sample_rate)
                said = said[: max(0, track.size - start)]
                track[start:start + said.size] = said
                clip.audio = np.stack([track] * clip.audio.shape[0])
            return clip

        return render_then_fault

    def render(self, job, attempt=1, submitted_at=None, call_id=None):
        if self.render_log:
            with open(self.render_log, "a") as log:  # closed at once: survives a SIGKILL right after
                log.write(f"{job.render_key} {attempt} {os.getpid()}\n")
        if attempt == 1 and job.render_key in self.hang_keys:
            time.sleep(3600)  # far past any deadline: the pool must kill and replace this actor
        self._call.job, self._call.attempt = job, attempt
        try:
            return super().render(job, attempt, submitted_at, call_id)
        finally:
            self._call.job = None


def render_starts(render_log) -> dict[str, list[int]]:
    """Attempt numbers started per render key, in order, from a `render_log` file."""
    starts: dict[str, list[int]] = {}
    if os.path.exists(render_log):
        for line in Path(render_log).read_text().splitlines():
            key, attempt, _pid = line.split()
            starts.setdefault(key, []).append(int(attempt))
    return starts


def stage_starts(stage_log) -> dict[str, list[tuple[int, str]]]:
    """(attempt, stage) of every pipeline stage started, per render key, in order, from a `stage_log`."""
    starts: dict[str, list[tuple[int, str]]] = {}
    if os.path.exists(stage_log):
        for line in Path(stage_log).read_text().splitlines():
            key, attempt, stage = line.split()
            starts.setdefault(key, []).append((int(attempt), stage))
    return starts


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
