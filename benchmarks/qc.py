"""Delivery QC and destination masters per clip, next to what the clip cost to render and encode.

Two clips, measured side by side in one run, CPU seconds of this process (all threads):
- the tiny preset: a 2 s 256p render (CPU) + its encode, then QC and a master per shipped destination;
- a 5 s 1080p clip of synthetic frames (moving gradients + grain, roughly real footage): its
  encode, then the same. Target: QC and masters add at most 20 % to the encode.

    .venv/bin/python benchmarks/qc.py [--repeats 1] [--skip-tiny]

The last row is the step as the render actor runs it after the encode (horse_actors.delivery:
measure, check, every master, each stored as a blob in a local store).

Each step is printed with where its CPU went (indented, from cProfile timed by process CPU), and
the totals as a share of the encode. The target counts QC and the masters that copy the clip's
video: their cost is the sound (decode, normalise, encode: AAC for social, none to speak of for the
broadcasters' 24-bit PCM) and the master's re-measure. A destination that asks for another picture
(broadcast-us at 29.97) re-encodes it, about one encode, and is outside the target: that is a new
picture, not QC; `make_masters` makes it once for all destinations wanting the same picture.
Floors: QC's is the H.264 decode of every frame (one thread: ~0.65 CPU s here, ~8 % of the encode);
the social master's is FFmpeg's AAC encoder (192 kb/s, default coder): 0.13-0.44 CPU s per 5 s of
stereo by content (wide stereo least, speech ~0.3 s, this clip's exact dual mono, L = R, most: its
M/S search; cheaper settings trade sound quality, see media/mp4.py). Every measure also meters the
sound twice (ebur128, and the second meter QC checks it against: ~0.1 CPU s with the decode of the
sound), the clip and each master. Not spent twice: the probe's decode of a first picture on opening
a file whose pictures are decoded anyway, or only copied (a master's re-measure compares its video
packets with the clip's instead); the masters' decode of the clip's sound and its true-peak
interpolation (they start from what QC metered, `Measurements.sound`).
The tiny model's random-weight sound is full-band noise that starts at full level: AAC overshoots
its first 20 ms by ~4.5 dB, so its social master can fail true peak, and QC says so.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from catalog import Store  # noqa: E402
from flows.destinations import load_destinations  # noqa: E402
from horse_actors import Delivery, RenderJob  # noqa: E402
from horse_actors.delivery import check_clip, make_deliverables  # noqa: E402
from media import encode_mp4  # noqa: E402
from media.master import make_master, make_masters  # noqa: E402
from media.measure import measure  # noqa: E402


def cpu_time(fn, repeats: int) -> tuple[float, object]:
    """Median process CPU seconds (every thread) of `fn()`, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.process_time()
        result = fn()
        times.append(time.process_time() - start)
    return statistics.median(times), result


# Where a step's CPU goes: the cumulative CPU time of these media functions inside the step
# (cProfile timed by process CPU, every thread), printed indented under the step.
QC_PARTS = (("sound meters (both meters, silences)", "_audio_facts"), ("black/freeze scan", "add"))
MASTER_PARTS = (("sound decode + conform", "_conformed_sound"), ("normalise (gain, limiter)", "_normalised"),
                ("write (sound encode, mux)", "_write"), ("re-measure", "measure"))


def cpu_parts(fn, parts) -> tuple[float, list[tuple[str, float]], object]:
    """(process CPU seconds of `fn()`, [(part, CPU seconds)], result), one profiled run."""
    profile = cProfile.Profile(time.process_time, builtins=False)  # C calls unprofiled: less overhead
    start = time.process_time()
    result = profile.runcall(fn)
    total = time.process_time() - start
    stats = pstats.Stats(profile).stats  # {(file, line, name): (calls, primitive, tottime, cumtime, callers)}
    found = []
    for label, name in parts:
        found.append((label, sum(v[3] for (file, _, fn_name), v in stats.items()
                                 if fn_name == name and "/media/" in file)))
    return total, found, result


def synthetic_1080p(seconds: float) -> SimpleNamespace:
    rng = np.random.default_rng(0)
    count, (h, w) = round(25 * seconds), (1080, 1920)
    y, x = np.mgrid[0:h, 0:w]
    base = ((x // 2 + y // 3) % 256).astype(np.int16)
    frames = np.empty((count, h, w, 3), np.uint8)
    for i in range(count):
        luma = np.clip(np.roll(base, 4 * i, axis=1) + rng.normal(0, 3, (h, w)).astype(np.int16), 0, 255)
        frames[i] = np.stack([luma, np.roll(luma, 9, axis=0), 255 - luma], axis=-1)
    s = np.arange(round(48_000 * seconds)) / 48_000
    voice = 0.3 * np.sin(2 * np.pi * 180 * s) * (0.6 + 0.4 * np.sin(2 * np.pi * 2.5 * s))
    return SimpleNamespace(frames=frames, audio=np.stack([voice, voice]).astype(np.float32), fps=25, sample_rate=48_000)


def tiny_render(seconds: float):
    from model import HappyHorsePipeline, RenderRequest

    pipe = HappyHorsePipeline.tiny(seed=0)
    request = RenderRequest(prompt="A horse speaks to camera in warm light.", seconds=seconds, seed=1)
    pipe(request)  # warm-up
    return lambda: pipe(request)


def qc_and_masters(label: str, clip_path: Path, before: float, brief_seconds: float, repeats: int, workdir: Path) -> None:
    destinations = load_destinations()
    rows: list[tuple[str, float, bool]] = [(label, before, False)]  # (name, CPU s, indented part)
    qc, measured = cpu_time(lambda: measure(clip_path), repeats)
    rows.append(("QC measure (decode picture + sound once)", qc, False))
    _, parts, _ = cpu_parts(lambda: measure(clip_path), QC_PARTS)
    rows += [(f"{name}", seconds, True) for name, seconds in parts]
    total, copied, copies = qc, qc, []
    for name, destination in destinations.items():
        seconds, (info, report) = cpu_time(
            lambda d=destination: make_master(clip_path, d, workdir / f"{d.name}.master", brief_seconds=brief_seconds,
                                              source=measured), repeats)
        how = info.video if not info.reencode_reasons else f"re-encoded: {', '.join(info.reencode_reasons)}"
        sound = info.measurements.audio.codec if info.measurements.audio else "no sound"
        rows.append((f"master {name} (video {how}, sound {sound}; {'pass' if report.passed else 'FAIL'})",
                     seconds, False))
        _, parts, _ = cpu_parts(lambda d=destination: make_master(
            clip_path, d, workdir / f"{d.name}.master", brief_seconds=brief_seconds, source=measured), MASTER_PARTS)
        rows += [(f"{part}", part_s, True) for part, part_s in parts]
        total += seconds
        if not info.reencode_reasons:
            copied += seconds
            copies.append(name)
    together, _ = cpu_time(lambda: make_masters(clip_path, list(destinations.values()), workdir / "all",
                                                brief_seconds=brief_seconds, source=measured), repeats)
    # The target: the masters that copy video made in one call, as the actor makes them (the clip
    # opened and its sound decoded once for all of them, not once per master as in the rows above).
    copying = [destinations[name] for name in copies]
    copies_together, _ = cpu_time(lambda: make_masters(clip_path, copying, workdir / "copies",
                                                       brief_seconds=brief_seconds, source=measured), repeats)
    job = RenderJob("0" * 64, SimpleNamespace(seconds=brief_seconds), "bench", "s1", "v1",
                    delivery=Delivery(tuple(destinations.values())))
    store = Store(str(workdir / "store"))
    actor_step, _ = cpu_time(lambda: make_deliverables(str(clip_path), job, check_clip(str(clip_path), 0, job), store,
                                                       str(workdir / "actor"), {}), repeats)
    width = max(len(n) for n, _, _ in rows) + 6
    for name, seconds, part in rows:
        share = "" if name == label else f"{100 * seconds / before:6.1f} %"
        print(f"  {'    ' if part else ''}{name:<{width - (4 if part else 0)}}{seconds:8.3f} s {share}")
    for name, seconds in (
        ("QC + every master", total),
        ("QC + every master by make_masters (shared re-encodes)", qc + together),
        ("QC + the masters that copy video, each made alone", copied),
        ("QC + the masters that copy video, made together (the target: <= 20 %)", qc + copies_together),
        ("the actor step (measure, check, every master, stored)", actor_step),
    ):
        print(f"  {name:<{width}}{seconds:8.3f} s {100 * seconds / before:6.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-tiny", action="store_true", help="only the 1080p clip (no torch needed)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="horse-bench-qc-"))
    try:
        if not args.skip_tiny:
            render = tiny_render(2.0)
            render_s, clip = cpu_time(render, args.repeats)
            encode_s, _ = cpu_time(lambda: encode_mp4(clip, workdir / "tiny.mp4"), args.repeats)
            h, w = clip.frames.shape[1:3]
            print(f"tiny preset, 2 s brief: {clip.frames.shape[0]} frames {w}x{h} (CPU seconds; % of render + encode)")
            qc_and_masters(f"render {render_s:.3f} s + encode {encode_s:.3f} s", workdir / "tiny.mp4",
                           render_s + encode_s, 2.0, args.repeats, workdir)
        clip = synthetic_1080p(5.0)
        encode_s, _ = cpu_time(lambda: encode_mp4(clip, workdir / "hd.mp4"), args.repeats)
        print("\n5 s 1080p synthetic clip: 125 frames 1920x1080 (CPU seconds; % of its encode)")
        qc_and_masters("encode (libx264 veryfast crf 18 + AAC)", workdir / "hd.mp4", encode_s, 5.0, args.repeats, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
