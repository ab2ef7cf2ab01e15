"""Helpers for the API backend tests: fast provider specs, jobs, a tiny first-frame image."""

from __future__ import annotations

import io
import os
from dataclasses import replace

import numpy as np
from PIL import Image

from catalog import render_key
from horse_actors import RenderJob
from horse_actors.backends import map_brief, provider_spec

# Distinctive values, so a leak scan can find them anywhere (tests/conftest.py sets them before
# the session's Ray cluster starts, so its workers have them too).
ARK_KEY = os.environ["ARK_API_KEY"]
FAL_KEY = os.environ["FAL_KEY"]


def fast_spec(name: str, server, **overrides):
    """A preset pointed at a local server, polling and backing off in milliseconds."""
    fast = dict(poll_initial_s=0.01, poll_max_s=0.02, retry_initial_s=0.01, retry_max_s=0.05, retry_budget_s=5.0,
                max_wait_s=60.0, request_timeout_s=10.0)
    return provider_spec(name, base_url=server.base_url, **{**fast, **overrides})


def png(width: int = 32, height: int = 18) -> bytes:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def api_job(spec, *, scene: str = "A barista slides a cup across the counter.", seed: int = 7,
            shot: str = "hero", aspect_ratio: str = "16:9", resolution: str = "256p", seconds: float = 4,
            image: bytes | None = None, line: str = "Your flat white.") -> RenderJob:
    request = map_brief(spec, scene=scene, aspect_ratio=aspect_ratio, resolution=resolution, seconds=seconds,
                        seed=seed, image=image, background_sound="espresso machine hiss",
                        dialogue=[{"speaker": "Barista", "language": "en", "line": line}])
    return RenderJob(render_key(request.key_inputs()), request, "spring", shot, "en-16x9-t1")


def with_limit(spec, n: int):
    return replace(spec, max_concurrent=n)
