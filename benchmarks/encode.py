"""mp4 encoding: our PyAV encoder (libx264 yuv420p BT.709, AAC 48 kHz, faststart, read back and
checked) next to the ffmpeg command line encoding the same frames and audio with the same
settings, piped in raw (the ratio is the figure).

    .venv/bin/python benchmarks/encode.py [--seconds 5] [--width 448 --height 256] [--repeats 3]

Needs the `ffmpeg` program for the comparison (Debian: apt-get install ffmpeg).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from media import AUDIO_BIT_RATE, AUDIO_RATE, encode_mp4


@dataclass
class Clip:
    frames: np.ndarray
    audio: np.ndarray
    fps: int = 25
    sample_rate: int = 44100


def synthetic_clip(seconds: float, width: int, height: int) -> Clip:
    """Moving gradients and a chord: content an encoder has to work on, unlike flat frames."""
    t = int(25 * seconds)
    y, x = np.mgrid[0:height, 0:width]
    frames = np.stack([((x + 3 * i) % 256 + (y // 2)) % 256 for i in range(t)]).astype(np.uint8)
    frames = np.stack([frames, np.roll(frames, 7, axis=2), 255 - frames], axis=-1)
    s = np.arange(int(44100 * seconds)) / 44100
    tone = 0.2 * (np.sin(2 * np.pi * 220 * s) + np.sin(2 * np.pi * 277 * s))
    return Clip(frames, np.stack([tone, tone]).astype(np.float32))


def ffmpeg_encode(ffmpeg: str, clip: Clip, out: Path, workdir: Path) -> None:
    raw_audio = workdir / "audio.f32"
    clip.audio.T.astype("<f4").tofile(raw_audio)
    t, h, w, _ = clip.frames.shape
    command = [
        ffmpeg, "-y", "-loglevel", "error",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(clip.fps), "-i", "-",
        "-f", "f32le", "-ar", str(clip.sample_rate), "-ac", "2", "-i", str(raw_audio),
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
        "-vf", "scale=out_color_matrix=bt709:out_range=tv",
        "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv",
        "-c:a", "aac", "-ar", str(AUDIO_RATE), "-b:a", str(AUDIO_BIT_RATE),
        "-movflags", "+faststart", str(out),
    ]
    subprocess.run(command, input=clip.frames.tobytes(), check=True)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--width", type=int, default=448)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    clip = synthetic_clip(args.seconds, args.width, args.height)
    workdir = Path(tempfile.mkdtemp(prefix="horse-bench-encode-"))
    try:
        ours = median_time(lambda: encode_mp4(clip, workdir / "pyav.mp4"), args.repeats)
        print(f"{clip.frames.shape[0]} frames {args.width}x{args.height} + {args.seconds:g}s stereo audio")
        print(f"PyAV encode + read-back check  {ours:7.3f} s  ({(workdir / 'pyav.mp4').stat().st_size / 1024:.0f} KiB)")
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            print("ffmpeg command line: not installed (apt-get install ffmpeg) - no ratio")
            return
        theirs = median_time(lambda: ffmpeg_encode(ffmpeg, clip, workdir / "cli.mp4", workdir), args.repeats)
        print(f"ffmpeg command line            {theirs:7.3f} s  ({(workdir / 'cli.mp4').stat().st_size / 1024:.0f} KiB)")
        print(f"ratio PyAV / ffmpeg CLI        {ours / theirs:7.2f}x")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
