"""Reference inputs of a shot (a face still, a voice recording) decoded for the model.

Reference files are usually a handful per campaign shared by many shots: each is decoded once
per process, and every job shares the same read-only array.
"""

from __future__ import annotations

import functools

import av
import numpy as np
from PIL import Image


@functools.lru_cache(maxsize=256)
def load_image(path: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB, read-only."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"))
    array.setflags(write=False)
    return array


@functools.lru_cache(maxsize=256)
def load_audio(path: str) -> tuple[np.ndarray, int]:
    """(float32 (channels, samples) planar audio, sample rate), whatever the file's sample format."""
    with av.open(path) as container:
        stream = container.streams.audio[0]
        to_planar = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=stream.rate)
        chunks = [out.to_ndarray() for frame in container.decode(stream) for out in to_planar.resample(frame)]
        chunks += [out.to_ndarray() for out in to_planar.resample(None)]
        rate = stream.rate
    audio = np.concatenate(chunks, axis=1).astype(np.float32)
    audio.setflags(write=False)
    return audio, rate
