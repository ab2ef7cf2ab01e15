"""Training clips read for the model: an mp4 as frames at the model's size and its sound.

A brand adapter trains on clips whose frame count is 4k+1 (the video VAE's temporal stride) and
whose sides fit the model's base tier, so each clip is scaled (and centre-cropped to the target
aspect), cut to the longest 4k+1 frames it has and at most `max_frames`, and its audio cut to
the same length.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image

from .reference import load_audio


class ClipError(ValueError):
    """A file that cannot be a training clip; the message names the file and why."""


@dataclass(frozen=True)
class TrainingClip:
    frames: np.ndarray  # uint8 (F, height, width, 3), F = 4k+1
    audio: np.ndarray  # float32 (channels, samples)
    sample_rate: int


def _fit(image: Image.Image, width: int, height: int) -> np.ndarray:
    w, h = image.size
    if w * height > h * width:  # wider than the target: crop the sides
        cw, ch = round(h * width / height), h
    else:
        cw, ch = w, round(w * height / width)
    left, top = (w - cw) // 2, (h - ch) // 2
    return np.asarray(image.crop((left, top, left + cw, top + ch)).resize((width, height), Image.BICUBIC))


def read_training_clip(path: str | os.PathLike, width: int, height: int, fps: int, max_frames: int = 121) -> TrainingClip:
    """The clip at `path` scaled to width x height, its frames at `fps` (as stored: a clip at
    another frame rate is refused, not resampled), cut to 4k+1 frames, with its audio."""
    path = os.fspath(path)
    try:
        with av.open(path) as box:
            if not box.streams.video or not box.streams.audio:
                raise ClipError(f"{path}: a training clip needs a video and an audio stream")
            stream = box.streams.video[0]
            if stream.average_rate is not None and round(float(stream.average_rate)) != fps:
                raise ClipError(f"{path}: {float(stream.average_rate):g} fps; the model trains on {fps} fps clips")
            frames = []
            for frame in box.decode(stream):
                frames.append(_fit(frame.to_image(), width, height))
                if len(frames) == max_frames:
                    break
        audio, rate = load_audio(path)
    except av.error.FFmpegError as exc:
        raise ClipError(f"{path}: not a readable video ({exc})") from None
    keep = (len(frames) - 1) // 4 * 4 + 1
    if keep < 5:
        raise ClipError(f"{path}: {len(frames)} frames; a training clip needs at least 5")
    samples = min(audio.shape[1], round(keep / fps * rate))
    return TrainingClip(np.stack(frames[:keep]), np.ascontiguousarray(audio[:, :samples]), rate)
