"""Synthetic clips with known properties for the QC tests: tones at exact levels, black and frozen
pictures at known times, written as real mp4s (libx264 + AAC) and measured back."""

from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import av
import numpy as np
import pytest

from media import encode_mp4
from media.mp4 import MP4_OPTIONS, add_audio_stream, add_video_stream, mux_audio

RATE = 48_000


def tone(amplitude: float, seconds: float, hz: float = 997.0, fade: float = 0.03) -> np.ndarray:
    """A sine with 30 ms raised-cosine fades: an abrupt start makes AAC overshoot the peak by ~0.4 dB.
    The fades cost 0.0375/seconds of the energy (-0.055 LU on a 3 s tone)."""
    t = np.arange(round(seconds * RATE)) / RATE
    sound = amplitude * np.sin(2 * np.pi * hz * t)
    if fade:
        ramp = np.sin(np.linspace(0, np.pi / 2, round(fade * RATE))) ** 2
        sound[: ramp.size] *= ramp
        sound[-ramp.size :] *= ramp[::-1]
    return sound.astype(np.float32)


def moving_frames(count: int, height: int = 64, width: int = 96, start: int = 0) -> np.ndarray:
    """A gradient moving 5 px a frame: never black, never frozen."""
    y, x = np.mgrid[0:height, 0:width]
    frames = np.stack([((x + 5 * (start + i)) * 2 + y) % 200 + 40 for i in range(count)]).astype(np.uint8)
    return np.repeat(frames[..., None], 3, axis=-1)


class Clips:
    def __init__(self, folder):
        self.folder = folder
        self.tone, self.moving_frames = tone, moving_frames

    def write(self, name: str, frames: np.ndarray, audio: np.ndarray | None, fps: int = 25) -> str:
        """Through the render encoder (stereo AAC; mono input is copied to both channels)."""
        path = str(self.folder / name)
        encode_mp4(SimpleNamespace(frames=frames, audio=audio, fps=fps, sample_rate=RATE), path)
        return path

    def write_mono(self, name: str, frames: np.ndarray, audio: np.ndarray, fps: int = 25) -> str:
        """A file whose audio track is mono (the render encoder always writes stereo)."""
        path = str(self.folder / name)
        with av.open(path, "w", format="mp4", options=MP4_OPTIONS) as out:
            video = add_video_stream(out, frames.shape[2], frames.shape[1], fps)
            sound = add_audio_stream(out, "mono")
            for i, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
                frame.pts, frame.time_base = i, Fraction(1, fps)
                out.mux(video.encode(frame))
            out.mux(video.encode(None))
            mux_audio(out, sound, audio[None, :], RATE)
        return path


@pytest.fixture
def clips(tmp_path) -> Clips:
    return Clips(tmp_path)
