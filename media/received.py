"""Read back an mp4 someone else rendered (an API provider's result) and say how it differs
from what was asked, before it is stored under a render key.

`check_received` never raises for a file that differs: a readable clip at the wrong size is
still a clip, and the caller records it as what it is (degraded). A file PyAV cannot read as
an mp4 with a video stream raises ReceivedFileError.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import av
import numpy as np

from .mp4 import EncodeInfo, probe_mp4

# Tolerances: providers round sizes to their own grids (Seedance 720p 16:9 is 1280x720 or
# 1248x704) and durations to whole frames at their frame rate.
RATIO_TOLERANCE = 0.03        # relative difference of width/height
DURATION_TOLERANCE_S = 0.5
TIER_TOLERANCE = 0.9          # short side must reach 90 % of the tier's height


class ReceivedFileError(ValueError):
    """The downloaded file is not a readable mp4 with a video stream."""


@dataclass(frozen=True)
class ReceivedCheck:
    info: EncodeInfo
    tier: str                  # the resolution tier the file really has, e.g. "720p"
    problems: list[str] = field(default_factory=list)


def tier_of(width: int, height: int, tiers: tuple[str, ...]) -> str:
    """The highest tier ("480p", "720p", ...) whose height the short side reaches."""
    short = min(width, height)
    reached = [t for t in tiers if short >= TIER_TOLERANCE * int(t.rstrip("p"))]
    return max(reached, key=lambda t: int(t.rstrip("p"))) if reached else f"{short}p"


def check_received(path: str | os.PathLike, *, ratio: tuple[int, int], seconds: float, resolution: str,
                   audio: bool, tiers: tuple[str, ...]) -> ReceivedCheck:
    """Probe `path` and list every way it differs from the asked ratio (w, h), duration,
    resolution tier and audio track."""
    try:
        info = probe_mp4(path)
    except (av.error.FFmpegError, IndexError, OSError) as exc:
        raise ReceivedFileError(f"not a readable mp4 with a video stream ({type(exc).__name__}: {exc})") from None
    problems = []
    want, got = ratio[0] / ratio[1], info.width / max(info.height, 1)
    if abs(got / want - 1) > RATIO_TOLERANCE:
        problems.append(f"size {info.width}x{info.height} is not {ratio[0]}:{ratio[1]}")
    if abs(info.video_seconds - seconds) > DURATION_TOLERANCE_S:
        problems.append(f"lasts {info.video_seconds:.2f}s, asked {seconds:g}s")
    tier = tier_of(info.width, info.height, tiers)
    if tier != resolution:
        problems.append(f"resolution {tier} ({info.width}x{info.height}), asked {resolution}")
    if audio and info.audio_seconds is None:
        problems.append("no audio track, asked for audio")
    return ReceivedCheck(info, tier, problems)


def first_frame(path: str | os.PathLike) -> np.ndarray:
    """The first decoded video frame as uint8 (1, H, W, 3), for a poster."""
    with av.open(os.fspath(path)) as box:
        frame = next(box.decode(video=0))
        return frame.to_ndarray(format="rgb24")[None]
