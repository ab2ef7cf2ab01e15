"""Encode a rendered clip to a delivery mp4 with PyAV, and check what was written.

Parameters follow shared/research/storage-lineage-media.md §3: libx264 yuv420p converted with
BT.709 (the automatic rgb24->yuv420p conversion uses BT.601 and leaves the stream untagged),
AAC 48 kHz stereo with explicit pts (without them the audio track ends one AAC frame late),
`movflags=faststart` (moov before mdat; needs a real file, not BytesIO). Arbitrary provenance
tags need `use_metadata_tags`, otherwise the mp4 muxer keeps only its fixed iTunes-style keys.

Speed (benchmarks/encode.py, against the ffmpeg command line): x264 runs frame threads, one swscale
context converts every frame, and audio is encoded between video frames, so AAC runs while x264's
threads work (as the command line interleaves them) instead of after the last frame.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Mapping

import av
import numpy as np
from av.video.reformatter import VideoReformatter

AUDIO_RATE = 48_000
AUDIO_BIT_RATE = 192_000
# |video end - audio end| allowed on read-back; AAC frames are ~21 ms at 48 kHz.
MAX_AV_DRIFT_S = 0.05
BT709 = 1  # AVCOL_PRI_BT709 == AVCOL_TRC_BT709 == AVCOL_SPC_BT709 == 1
LIMITED_RANGE = 1  # AVCOL_RANGE_MPEG
MP4_OPTIONS = {"movflags": "faststart+use_metadata_tags"}
# x264's bytes depend on its thread count, and its default (1.5 x the machine's cores) would make a
# render's mp4 - and so its blob sha256 - differ between machines: the count is fixed. Frame threads,
# not libavcodec's default slice threads, which x264 caps by frame height (one thread below 128 rows).
X264_THREADS = 4


class EncodeCheckError(RuntimeError):
    """The mp4 read back does not match what was encoded."""


@dataclass(frozen=True)
class EncodeInfo:
    """What `probe_mp4` found in a written file."""

    path: str
    bytes: int
    width: int
    height: int
    frames: int
    fps: float
    video_seconds: float
    audio_seconds: float | None
    audio_rate: int | None
    audio_channels: int | None
    faststart: bool
    colorspace: int
    metadata: dict[str, str] = field(default_factory=dict)


def even_frames(frames: np.ndarray) -> np.ndarray:
    """Crop one row/column when height/width is odd: libx264 with yuv420p refuses odd sizes.

    Cropping keeps only rendered pixels (padding would invent some) and moves the size by <= 1 px.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T,H,W,3), got {frames.dtype} {frames.shape}")
    _, h, w, _ = frames.shape
    if h < 2 or w < 2:
        raise ValueError(f"frames too small to encode: {w}x{h}")
    return frames[:, : h - h % 2, : w - w % 2]


def encode_mp4(
    clip: Any,
    path: str | os.PathLike,
    metadata: Mapping[str, Any] | None = None,
    *,
    crf: int = 18,
    preset: str = "veryfast",
) -> EncodeInfo:
    """Write `clip` (frames uint8 (T,H,W,3), audio float32 (C,S) or None, fps, sample_rate) to `path`.

    `metadata` becomes mp4 tags, readable back through `av.open(path).metadata`. The file is read
    back and checked (`check_mp4`); the returned EncodeInfo describes the file as read back.
    """
    frames = even_frames(np.asarray(clip.frames))
    fps = int(clip.fps)
    audio = None if clip.audio is None else _stereo_float(np.asarray(clip.audio))
    tags = {str(k): str(v) for k, v in (metadata or {}).items() if v is not None}
    t, h, w, _ = frames.shape

    to_bt709 = VideoReformatter()    # one swscale context for all frames, not one per frame
    with av.open(os.fspath(path), "w", format="mp4", options=MP4_OPTIONS) as out:
        out.metadata.update(tags)
        video = add_video_stream(out, w, h, fps, crf=crf, preset=preset)
        sound = None if audio is None else AudioFeed(out, add_audio_stream(out), audio, int(clip.sample_rate))
        for i in range(t):
            frame = to_bt709.reformat(
                av.VideoFrame.from_ndarray(frames[i], format="rgb24"),
                format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG",
                dst_color_trc=BT709, dst_color_primaries=BT709,
            )
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(video.encode(frame))
            if sound is not None:    # the sound of frame i, encoded while x264's threads work on it
                sound.until((i + 1) * sound.rate // fps)
        out.mux(video.encode(None))
        if sound is not None:
            sound.close()

    expected_audio = None if audio is None else audio.shape[1] / float(clip.sample_rate)
    return check_mp4(path, frames=t, width=w, height=h, fps=fps,
                     audio_seconds=expected_audio, metadata=tags)


def add_video_stream(out, width: int, height: int, fps, *, crf: int = 18, preset: str = "veryfast", pix_fmt: str = "yuv420p"):
    """A libx264 stream tagged BT.709 limited range (frames must already be converted that way)."""
    video = out.add_stream("libx264", rate=fps)
    video.width, video.height, video.pix_fmt = width, height, pix_fmt
    video.options = {"crf": str(crf), "preset": preset}
    cc = video.codec_context
    cc.thread_type, cc.thread_count = "FRAME", X264_THREADS
    cc.colorspace = cc.color_primaries = cc.color_trc = BT709
    cc.color_range = LIMITED_RANGE
    return video


def add_audio_stream(out, layout: str = "stereo", codec: str = "aac"):
    """A 48 kHz sound stream: AAC at AUDIO_BIT_RATE, or PCM (e.g. "pcm_s24le", in a mov).

    AAC is FFmpeg's native encoder with its default coder (twoloop), the costliest step of a social
    master (0.2-0.45 CPU s per 5 s of stereo). Measured on 5 s at 192 kb/s and not taken, as they
    trade sound for CPU: `aac_coder fast` takes ~45 % less CPU on benchmarks/qc.py's dual-mono tone
    and ~80 % less on noise, but lost 1 LU on full-band noise (high bands dropped), and FFmpeg made
    twoloop the default again in 2021 because fast sounds worse; `aac_ms 0` takes ~65 % less on
    that tone (~10 % on dual-mono speech), with ~20 dB more coding noise on it and a 1.5 dB
    true-peak overshoot at its start."""
    sound = out.add_stream(codec, rate=AUDIO_RATE)
    sound.layout = layout
    if codec == "aac":
        sound.bit_rate = AUDIO_BIT_RATE
    return sound


class AudioFeed:
    """Encodes float32 (channels, samples) at `rate` into `sound` in pieces, with explicit pts (without
    them the track ends one AAC frame late); any piece size works, the encoder re-chunks to 1024."""

    def __init__(self, out, sound, audio: np.ndarray, rate: int):
        self.out, self.sound, self.audio, self.rate = out, sound, audio, rate
        self.layout = sound.layout.name
        self.done = 0

    def until(self, end: int) -> None:
        """Encode the samples before sample `end` not yet encoded."""
        end = min(self.audio.shape[1], end)
        if end <= self.done:
            return
        piece = np.ascontiguousarray(self.audio[:, self.done : end], dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout=self.layout)
        frame.sample_rate = self.rate
        frame.pts, frame.time_base = self.done, Fraction(1, self.rate)
        self.out.mux(self.sound.encode(frame))
        self.done = end

    def close(self) -> None:
        """Encode the rest and flush the encoder."""
        self.until(self.audio.shape[1])
        self.out.mux(self.sound.encode(None))


def mux_audio(out, sound, audio: np.ndarray, rate: int) -> None:
    """Encode all of float32 (channels, samples) at `rate` into `sound` and flush it."""
    AudioFeed(out, sound, audio, rate).close()


def _stereo_float(audio: np.ndarray) -> np.ndarray:
    if audio.ndim == 1:
        audio = audio[None, :]
    if audio.ndim != 2 or audio.shape[0] not in (1, 2):
        raise ValueError(f"audio must be (channels<=2, samples), got {audio.shape}")
    if audio.shape[0] == 1:
        audio = np.repeat(audio, 2, axis=0)
    return np.clip(audio.astype(np.float32, copy=False), -1.0, 1.0)


def probe_mp4(path: str | os.PathLike) -> EncodeInfo:
    """Read a file's streams, durations, colour tags and metadata (no frame decode)."""
    path = os.fspath(path)
    with av.open(path) as box:
        video = box.streams.video[0]
        vdur = float(video.duration * video.time_base) if video.duration else 0.0
        audio = box.streams.audio[0] if box.streams.audio else None
        adur = float(audio.duration * audio.time_base) if audio and audio.duration else None
        cc = video.codec_context
        return EncodeInfo(
            path=path,
            bytes=os.path.getsize(path),
            width=cc.width,
            height=cc.height,
            frames=video.frames,
            fps=float(video.average_rate or 0),
            video_seconds=vdur,
            audio_seconds=adur,
            audio_rate=audio.codec_context.sample_rate if audio else None,
            audio_channels=audio.codec_context.channels if audio else None,
            faststart=moov_first(path),
            colorspace=int(cc.colorspace),
            metadata=dict(box.metadata),
        )


def check_mp4(
    path: str | os.PathLike,
    *,
    frames: int,
    width: int,
    height: int,
    fps: int,
    audio_seconds: float | None,
    metadata: Mapping[str, str] | None = None,
) -> EncodeInfo:
    """Probe `path` and raise EncodeCheckError unless it holds what was meant to be written."""
    info = probe_mp4(path)
    problems = []
    if (info.width, info.height) != (width, height):
        problems.append(f"size {info.width}x{info.height} != {width}x{height}")
    if info.frames != frames:
        problems.append(f"{info.frames} video frames != {frames}")
    if abs(info.video_seconds - frames / fps) > 1.0 / fps:
        problems.append(f"video lasts {info.video_seconds:.3f}s, expected {frames / fps:.3f}s")
    if not info.faststart:
        problems.append("moov box is not before mdat (faststart missing)")
    if info.colorspace != BT709:
        problems.append(f"colorspace tag {info.colorspace} is not BT.709")
    if audio_seconds is not None:
        if info.audio_seconds is None:
            problems.append("audio stream missing")
        else:
            if (info.audio_rate, info.audio_channels) != (AUDIO_RATE, 2):
                problems.append(f"audio {info.audio_rate} Hz x{info.audio_channels}, expected 48 kHz stereo")
            if abs(info.audio_seconds - audio_seconds) > MAX_AV_DRIFT_S:
                problems.append(f"audio lasts {info.audio_seconds:.3f}s, expected {audio_seconds:.3f}s")
            if abs(info.audio_seconds - info.video_seconds) > MAX_AV_DRIFT_S:
                problems.append(f"A/V ends differ: video {info.video_seconds:.3f}s, audio {info.audio_seconds:.3f}s")
    for key, value in (metadata or {}).items():
        if info.metadata.get(key) != value:
            problems.append(f"tag {key!r} reads back as {info.metadata.get(key)!r}, wrote {value!r}")
    if problems:
        raise EncodeCheckError(f"{os.fspath(path)}: " + "; ".join(problems))
    return info


def moov_first(path: str) -> bool:
    """True when the first top-level box after `ftyp` (skipping `free`) is `moov`."""
    with open(path, "rb") as f:
        while True:
            head = f.read(8)
            if len(head) < 8:
                return False
            size, kind = int.from_bytes(head[:4], "big"), head[4:8]
            if kind == b"moov":
                return True
            if kind == b"mdat":
                return False
            if size == 1:  # 64-bit size follows
                size = int.from_bytes(f.read(8), "big") - 8
            if size < 8:
                return False
            f.seek(size - 8, io.SEEK_CUR)
