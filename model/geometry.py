"""Output geometry: the one home of resolution tiers, aspect ratios and the pixel size they give.

No torch here: manifest validation and planning use it without loading the model.
A tier names the short side of the frame; "256p" is rendered directly, "540p" and "1080p" are
reached through a super-resolution stage. The pixel value of each tier belongs to the model
(`PipelineConfig.tiers`): the released model uses 256/512/1088 px, the tiny preset 64/96/128.
"""
from __future__ import annotations

from collections.abc import Mapping

from .errors import InvalidRequest

RESOLUTIONS: tuple[str, ...] = ("256p", "540p", "1080p")
ASPECT_RATIOS: dict[str, tuple[int, int]] = {"16:9": (16, 9), "9:16": (9, 16), "1:1": (1, 1), "4:5": (4, 5)}
FULL_TIERS: dict[str, int] = {"256p": 256, "540p": 512, "1080p": 1088}
TINY_TIERS: dict[str, int] = {"256p": 64, "540p": 96, "1080p": 128}
BASE_TIER = "256p"                                        # what the base/distill models generate
SR_STAGE: dict[str, str] = {"540p": "540p_sr", "1080p": "1080p_sr"}   # the DiT that reaches each higher tier
GRID_PX = 32   # both sides are multiples of this: the latent grid must be even after the 16x VAE stride


def output_size(tiers: Mapping[str, int], resolution: str, aspect_ratio: str) -> tuple[int, int]:
    """(width, height) in pixels: the short side is the tier's and the long side is short * ratio
    rounded to a multiple of 32 px: 16:9 256p -> 448x256, 540p -> 896x512, 1080p -> 1920x1088."""
    if resolution not in tiers:
        raise InvalidRequest(f"resolution must be one of {list(tiers)}, got {resolution!r}")
    if aspect_ratio not in ASPECT_RATIOS:
        raise InvalidRequest(f"aspect_ratio must be one of {list(ASPECT_RATIOS)}, got {aspect_ratio!r}")
    short = tiers[resolution]
    a, b = ASPECT_RATIOS[aspect_ratio]
    long = max(GRID_PX, int(round(short * max(a, b) / min(a, b) / GRID_PX)) * GRID_PX)
    return (long, short) if a >= b else (short, long)
