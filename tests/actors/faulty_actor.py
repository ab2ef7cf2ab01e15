"""A RenderActor with planned faults, for pool tests only: production actors carry no fault hooks.

`FaultyRenderActor.planned(...)` returns a subclass with the plan baked in; hand it to
`RenderPool(config, actor_class=...)`. Ray workers cannot import this module (tests/ is not a
package on their path), so it is registered with Ray's cloudpickle to travel by value.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import ray.cloudpickle
import torch

from horse_actors import RenderActor


class FaultyRenderActor(RenderActor):
    hang_keys: frozenset[str] = frozenset()       # these jobs hang on attempt 1, like a stuck kernel
    oom_at: dict[str, frozenset[str]] = {}        # render_key -> stages that raise torch's OOM error
    render_log: str | None = None                 # file that gets one line per render started
    black_seeds: frozenset[int] = frozenset()     # clips rendered with these seeds come out all black
    seed_log: str | None = None                   # file that gets one line per clip rendered: key, seed
    speech: dict[int, np.ndarray] = {}            # seed -> 16 kHz mono speech that replaces the clip's sound

    @classmethod
    def planned(cls, *, hang_keys=(), oom_at: dict[str, set[str]] | None = None, render_log: str | None = None,
                black_seeds=(), seed_log: str | None = None,
                speech: dict[int, np.ndarray] | None = None) -> type["FaultyRenderActor"]:
        """`oom_at` stages: a DiT stage ("distill", "540p_sr", "1080p_sr", ...), which raises
        whenever it runs for that job, or "decode", which raises unless the VAE decodes in tiles.
        `black_seeds`: the model's picture is blanked for these seeds (a defect delivery QC must catch).
        `speech`: the clip's soundtrack becomes this speech (from 0.1 s, on both channels) for these seeds:
        what the dialogue gate hears."""
        plan = {"hang_keys": frozenset(hang_keys), "render_log": render_log, "black_seeds": frozenset(black_seeds),
                "seed_log": seed_log, "speech": dict(speech or {}), "oom_at": {key: frozenset(stages) for key, stages in (oom_at or {}).items()}}
        return type("PlannedFaultyRenderActor", (cls,), plan)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # loads and warms up without faults
        self._job = None
        for stage, dit in self.pipe.dits.items():
            dit.forward = self._oom_when(stage, dit.forward, lambda: True)
        vae = self.pipe.video_codec.vae
        vae.decode = self._oom_when("decode", vae.decode, lambda: not vae.use_tiling)

    def _oom_when(self, stage: str, forward, applies):
        def guarded(*args, **kwargs):
            if self._job is not None and stage in self.oom_at.get(self._job.render_key, ()) and applies():
                raise torch.cuda.OutOfMemoryError(f"CUDA out of memory in {stage} (planned by the test)")
            return forward(*args, **kwargs)

        return guarded

    def _render_with_ladder(self, job, *args):
        clip, request, used = super()._render_with_ladder(job, *args)
        if self.seed_log:
            with open(self.seed_log, "a") as log:
                log.write(f"{job.render_key} {request.seed}\n")
        if request.seed in self.black_seeds:
            clip.frames = np.zeros_like(clip.frames)
        if request.seed in self.speech:
            from scipy.signal import resample_poly

            said = resample_poly(self.speech[request.seed], clip.sample_rate, 16000).astype(np.float32)
            track = np.zeros(clip.audio.shape[1], np.float32)
            start = int(0.1 * clip.sample_rate)
            said = said[: max(0, track.size - start)]
            track[start:start + said.size] = said
            clip.audio = np.stack([track] * clip.audio.shape[0])
        return clip, request, used

    def render(self, job, attempt=1, submitted_at=None, call_id=None):
        if self.render_log:
            with open(self.render_log, "a") as log:  # closed at once: survives a SIGKILL right after
                log.write(f"{job.render_key} {attempt} {os.getpid()}\n")
        if attempt == 1 and job.render_key in self.hang_keys:
            time.sleep(3600)  # far past any deadline: the pool must kill and replace this actor
        self._job = job
        try:
            return super().render(job, attempt, submitted_at, call_id)
        finally:
            self._job = None


def render_starts(render_log) -> dict[str, list[int]]:
    """Attempt numbers started per render key, in order, from a `render_log` file."""
    starts: dict[str, list[int]] = {}
    if os.path.exists(render_log):
        for line in Path(render_log).read_text().splitlines():
            key, attempt, _pid = line.split()
            starts.setdefault(key, []).append(int(attempt))
    return starts


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
