"""A RenderActor that also reports what it rendered: the sha256 of each clip's frames and audio
before encoding, by render key, in its stats(). For tests that compare renders: the mp4 bytes of
one clip can differ from encode to encode (libx264 on a loaded machine), the rendered clip cannot.
Ray workers cannot import this module, so it travels by value (as faulty_actor does)."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import ray.cloudpickle

from horse_actors import RenderActor


class ClipHashingActor(RenderActor):
    def _render_with_ladder(self, job, *args):
        clip, request, used = super()._render_with_ladder(job, *args)
        digest = hashlib.sha256(np.ascontiguousarray(clip.frames).tobytes())
        digest.update(np.ascontiguousarray(clip.audio).tobytes())
        self.__dict__.setdefault("clip_hashes", {})[job.render_key] = digest.hexdigest()
        return clip, request, used

    def stats(self):
        return {**super().stats(), "clip_hashes": dict(self.__dict__.get("clip_hashes", {}))}


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
