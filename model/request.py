"""What a render asks for and what it returns: `RenderRequest`, `Clip`, their validation, and the
clip-length arithmetic (spec §3.3, §3.5). numpy only, no torch.

Lengths: for `seconds` s, n = round(25 s) audio-latent intervals, Ta = n + 1 audio latents,
T = n // 4 + 1 video latent frames and F = 4 (T - 1) + 1 decoded frames at 25 fps
(1 s -> 25 frames, 4 s -> 101, 5 s -> 125). With TA2V the given audio (cut to `seconds`) sets
Ta and T = (Ta - 1) // 4 + 1.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidRequest
from .geometry import SR_STAGE, output_size

PROFILES = ("distill", "base")
MAX_SECONDS = 30.0


@dataclass(frozen=True)
class RenderRequest:
    prompt: str
    seconds: float
    seed: int
    negative_prompt: str | None = None          # None = the built-in NEGATIVE_PROMPT
    resolution: str = "256p"                     # "540p"/"1080p" add the SR stage
    aspect_ratio: str = "16:9"
    profile: str = "distill"                     # "distill" (8 steps) | "base" (32 steps + CFG)
    image: np.ndarray | None = field(default=None, compare=False)   # TI2V: (H, W, 3) uint8
    audio: np.ndarray | None = field(default=None, compare=False)   # TA2V: (channels, samples) float32
    audio_sample_rate: int | None = None
    keep_audio_fixed: bool = False               # TA2V distill: keep the given audio clean (upstream re-noises it)


@dataclass
class Clip:
    frames: np.ndarray                           # uint8 (T, H, W, 3)
    audio: np.ndarray                            # float32 (channels, samples)
    fps: int = 25
    sample_rate: int = 44100
    timings: dict[str, float] = field(default_factory=dict)   # text_encode, denoise, sr, decode (s)
    stages_run: tuple[str, ...] = ()            # the stages this call ran ("base", "sr", "decode"; model.stages)


def latent_lengths(seconds: float, fps: int = 25) -> tuple[int, int]:
    """(Ta audio latents, T video latent frames) for a generated clip of `seconds`."""
    n = int(round(seconds * fps))
    return n + 1, n // 4 + 1


def frame_count(seconds: float, fps: int = 25) -> int:
    """Decoded video frames: 4 (T - 1) + 1 with T = round(25 s) // 4 + 1."""
    _, T = latent_lengths(seconds, fps)
    return 4 * (T - 1) + 1


def validate_request(r: RenderRequest, tiers: Mapping[str, int], stages: Collection[str]) -> None:
    """Raise InvalidRequest naming the first field that a model with these tiers and DiT stages
    cannot render."""
    if not isinstance(r, RenderRequest):
        raise InvalidRequest(f"expected a RenderRequest, got {type(r).__name__}")
    if not isinstance(r.prompt, str) or not r.prompt.strip():
        raise InvalidRequest("prompt must be a non-empty string")
    if r.negative_prompt is not None and not isinstance(r.negative_prompt, str):
        raise InvalidRequest("negative_prompt must be a string or None")
    output_size(tiers, r.resolution, r.aspect_ratio)
    if r.profile not in PROFILES:
        raise InvalidRequest(f"profile must be one of {PROFILES}, got {r.profile!r}")
    if r.profile not in stages:
        raise InvalidRequest(f"this checkpoint has no {r.profile}/ model (has {sorted(stages)})")
    if r.resolution in SR_STAGE and SR_STAGE[r.resolution] not in stages:
        raise InvalidRequest(f"this checkpoint has no {SR_STAGE[r.resolution]}/ model for {r.resolution}")
    if not isinstance(r.seconds, (int, float)) or not math.isfinite(r.seconds) or not 0.2 <= r.seconds <= MAX_SECONDS:
        raise InvalidRequest(f"seconds must be between 0.2 and {MAX_SECONDS}, got {r.seconds!r}")
    if isinstance(r.seed, bool) or not isinstance(r.seed, (int, np.integer)) or not 0 <= r.seed < 2 ** 63:
        raise InvalidRequest(f"seed must be an integer in [0, 2**63), got {r.seed!r}")
    if r.image is not None:
        img = r.image
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise InvalidRequest("image must be a uint8 numpy array of shape (H, W, 3)")
        if min(img.shape[:2]) < 8:
            raise InvalidRequest(f"image is too small: {img.shape[1]}x{img.shape[0]}")
    if r.audio is not None:
        a = r.audio
        if not isinstance(a, np.ndarray) or a.ndim != 2 or a.dtype != np.float32:
            raise InvalidRequest("audio must be a float32 numpy array of shape (channels, samples)")
        if not isinstance(r.audio_sample_rate, int) or not 8000 <= r.audio_sample_rate <= 192000:
            raise InvalidRequest("audio_sample_rate (8000..192000 Hz) is required with audio")
        if a.shape[1] < r.audio_sample_rate * 0.2:
            raise InvalidRequest("audio must be at least 0.2 s long")
        if not np.isfinite(a).all():
            raise InvalidRequest("audio contains NaN or inf")
    elif r.keep_audio_fixed:
        raise InvalidRequest("keep_audio_fixed needs an audio input")
