"""mp4 encoding: our PyAV encoder (libx264 yuv420p BT.709, AAC 48 kHz, faststart, read back and
checked) next to the ffmpeg command line encoding the same frames and audio with the same
settings, piped in raw (the ratio is the figure). The two run alternately, so both see the same
machine load; printed: median wall time, throughput ratio (ffmpeg time / ours: >= 1 means ours is
at least as fast) and CPU seconds (all threads; the command line's include its process start).

    .venv/bin/python benchmarks/encode.py [--seconds 5] [--width 448 --height 256] [--repeats 5]

Needs the `ffmpeg` program for the comparison (Debian: apt-get install ffmpeg).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from media import AUDIO_BIT_RATE, AUDIO_RATE, encode_mp4
from media.mp4 import X264_THREADS


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


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def side_by_side(runs: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall, cpu) seconds of each run, the runs taking turns so they share the load."""
    walls: dict[str, list[float]] = {name: [] for name in runs}
    cpus: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            cpu, start = cpu_seconds(), time.perf_counter()
            fn()
            walls[name].append(time.perf_counter() - start)
            cpus[name].append(cpu_seconds() - cpu)
    return {name: (statistics.median(walls[name]), statistics.median(cpus[name])) for name in runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--width", type=int, default=448)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    clip = synthetic_clip(args.seconds, args.width, args.height)
    workdir = Path(tempfile.mkdtemp(prefix="horse-bench-encode-"))
    ffmpeg = shutil.which("ffmpeg")
    runs = {"PyAV encode + read-back check": lambda: encode_mp4(clip, workdir / "pyav.mp4")}
    if ffmpeg is not None:
        runs["ffmpeg command line"] = lambda: ffmpeg_encode(ffmpeg, clip, workdir / "cli.mp4", workdir)
    try:
        print(f"{clip.frames.shape[0]} frames {args.width}x{args.height} + {args.seconds:g}s stereo audio, "
              f"median of {args.repeats}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"x264 threads: ours {X264_THREADS} (fixed, frame threads), command line auto")
        results = side_by_side(runs, args.repeats)
        for (name, (wall, cpu)), out in zip(results.items(), ("pyav.mp4", "cli.mp4")):
            print(f"{name:30s} {wall:7.3f} s  {cpu:7.3f} s CPU  ({(workdir / out).stat().st_size / 1024:.0f} KiB)")
        if ffmpeg is None:
            print("ffmpeg command line: not installed (apt-get install ffmpeg) - no ratio")
            return
        (ours, our_cpu), (theirs, their_cpu) = results.values()
        print(f"throughput PyAV / ffmpeg CLI   {theirs / ours:7.2f}x  (CPU per clip: {our_cpu / their_cpu:.2f}x)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
