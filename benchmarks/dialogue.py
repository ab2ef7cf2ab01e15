"""Dialogue gate cost on CPU: recognising one clip's speech, as a fraction of rendering the clip.

    python benchmarks/dialogue.py [--seconds 5] [--repeats 3]

Renders a tiny-preset clip (distilled, 256p) of `seconds`, then transcribes `seconds` of speech
synthesised by flite (Debian package `flite`) with pocketsphinx and with a random-weight tiny
Whisper saved and loaded like a staged checkpoint. Everything runs on one thread, medians of
`repeats` after a warm-up. Random weights never end a transcript early: Whisper's decode runs to
its cap (16 + 15 tokens a second), where real speech of 5 s takes about 20 tokens, so its figure
is an upper bound for this size. A real checkpoint is larger (tiny 39 M parameters ... large-v3
1.55 B) and on the GPU beside the render model.

The last row is the gate as the render actor runs it (horse_actors.dialogue_gate): the encoded
clip's soundtrack decoded, heard by pocketsphinx and compared with the line. The actor renders one
call at a time, so this is time the GPU waits (the gate does not overlap the next render yet).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import HappyHorsePipeline, RenderRequest  # noqa: E402
from model.speech import load_recognizer, mono_16k  # noqa: E402
from model.whisper import save_tiny_random_whisper  # noqa: E402
from horse_actors import DialogueCheck, SpeechSpec  # noqa: E402
from horse_actors.dialogue_gate import DialogueGate  # noqa: E402
from media import encode_mp4  # noqa: E402
from media.dialogue import Thresholds  # noqa: E402

LINE = ("Happy Horse makes every morning brighter. Good morning, this is Happy Horse with the news, "
        "and the coffee is ready when you are.")


def speech(seconds: float, folder: Path) -> np.ndarray:
    """`seconds` of flite speech, 16 kHz mono float32."""
    path = folder / "speech.wav"
    subprocess.run(["flite", "-voice", "rms", "-t", LINE, "-o", str(path)], check=True)
    with wave.open(str(path)) as f:
        audio = np.frombuffer(f.readframes(f.getnframes()), np.int16).astype(np.float32) / 32768
        audio = mono_16k(audio, f.getframerate())
    return np.resize(audio, round(seconds * 16000))  # repeated when the line is shorter


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not shutil.which("flite"):
        print("flite is not installed (Debian package `flite`): no speech to recognise")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        audio = speech(args.seconds, Path(tmp))
        pipe = HappyHorsePipeline.tiny(seed=0)
        request = RenderRequest(prompt="A horse speaks to camera in warm light.", seconds=args.seconds, seed=1)
        render = median_seconds(lambda: pipe(request), args.repeats)
        print(f"tiny render of a {args.seconds:g} s clip (256p distilled, CPU, {pipe.cpu_threads} thread): {render:.2f} s")
        print(f"{'recogniser':<34}{'load':>8}{'per clip':>10}{'of render':>11}")
        started = time.perf_counter()
        sphinx = load_recognizer("pocketsphinx")
        loads = {"pocketsphinx (bundled en-us)": (sphinx, time.perf_counter() - started)}
        folder = save_tiny_random_whisper(Path(tmp) / "whisper")
        started = time.perf_counter()
        whisper = load_recognizer("whisper", folder, device="cpu", cpu_threads=1)
        loads["whisper (tiny dims, random weights)"] = (whisper, time.perf_counter() - started)
        for name, (recognizer, load) in loads.items():
            per_clip = median_seconds(lambda: recognizer.transcribe(audio, 16000, "en"), args.repeats)
            print(f"{name:<34}{load:>7.2f}s{per_clip:>9.2f}s{per_clip / render:>11.2f}")
        clip = pipe(request)
        clip.audio = np.stack([mono_16k(audio, 16000)] * 2)
        clip.sample_rate = 16000
        path = str(Path(tmp) / "clip.mp4")
        encode_mp4(clip, path)
        started = time.perf_counter()
        gate = DialogueGate(SpeechSpec("pocketsphinx"), "cpu")
        load = time.perf_counter() - started
        check = DialogueCheck("en", (LINE,), Thresholds(0.2, 0.8, 0.6), ("Happy Horse",))
        per_clip = median_seconds(lambda: gate.hear(path, check), args.repeats)
        print(f"{'gate on the encoded clip (sphinx)':<34}{load:>7.2f}s{per_clip:>9.2f}s{per_clip / render:>11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
