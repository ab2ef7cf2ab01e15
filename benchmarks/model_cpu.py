"""Per-stage times of tiny clips on CPU (text_encode, denoise, sr, decode) for every mode, plus
the pipeline's overhead against the bare DiT loop and checkpoint load against a raw read.

    python benchmarks/model_cpu.py [--repeats 3] [--seconds 1]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import HappyHorsePipeline, RenderRequest  # noqa: E402
from model.pipeline import torch_threads  # noqa: E402
from model.packing import build_coords, patchify  # noqa: E402

STAGES = ("text_encode", "denoise", "sr", "decode")


def modes(seconds: float) -> dict[str, dict]:
    sr = 16000
    wave = (0.1 * np.sin(np.arange(int(seconds * sr)) / 7.0)).astype(np.float32)[None]
    image = np.random.default_rng(0).integers(0, 255, (96, 160, 3), dtype=np.uint8)
    return {
        "t2v distill 256p": {},
        "t2v base 256p (CFG)": {"profile": "base"},
        "ti2v distill 256p": {"image": image},
        "ta2v distill 256p": {"audio": wave, "audio_sample_rate": sr, "keep_audio_fixed": True},
        "t2v distill 540p SR": {"resolution": "540p"},
        "t2v distill 1080p SR (local attn)": {"resolution": "1080p"},
    }


def bench_modes(pipe, seconds, repeats) -> dict[str, dict[str, float]]:
    out = {}
    for name, kw in modes(seconds).items():
        req = RenderRequest(prompt="A horse speaks to camera in warm light.", seconds=seconds, seed=1, **kw)
        pipe(req)                                   # warm-up (kernel setup, negative prompt cache)
        runs = [pipe(req).timings for _ in range(repeats)]
        out[name] = {k: statistics.median(r[k] for r in runs) for k in STAGES}
        out[name]["total"] = sum(out[name][k] for k in STAGES)
    return out


@torch.no_grad()
def bare_loop(pipe, seconds, repeats) -> float:
    """8 bare DiT forwards on the same shapes as the distilled 256p clip (no codecs, no updates)."""
    dit = pipe.dits["distill"]
    w, h = pipe.size_for("256p", "16:9")
    n = int(round(seconds * 25))
    T, Ta = n // 4 + 1, n + 1
    text = pipe.text_encoder.encode("A horse speaks to camera in warm light.")
    video = torch.randn(1, pipe.config.z_dim, T, h // 16, w // 16)
    audio = torch.randn(Ta, dit.cfg.audio_in_channels)
    coords = build_coords((T, h // 32, w // 32), Ta, text.shape[0], dit.cfg.coords_style)
    times = []
    with torch_threads(pipe.cpu_threads):
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            for _ in range(8):
                dit(patchify(video), audio, text, coords)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def bench_checkpoint(pipe) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as d:
        pipe.save_pretrained(d)
        files = [p for p in Path(d).rglob("*") if p.is_file()]
        t0 = time.perf_counter()
        size = sum(len(p.read_bytes()) for p in files)
        raw = time.perf_counter() - t0
        t0 = time.perf_counter()
        HappyHorsePipeline.from_pretrained(d)
        load = time.perf_counter() - t0
    return load, raw, size


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-checkpoint", action="store_true")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    pipe = HappyHorsePipeline.tiny(seed=0)
    print(f"tiny pipeline built in {time.perf_counter() - t0:.2f} s (CPU, {pipe.cpu_threads} render thread)")
    results = bench_modes(pipe, args.seconds, args.repeats)
    print(f"\nper-stage seconds, {args.seconds:g} s clip, median of {args.repeats}:")
    print(f"{'mode':36s}" + "".join(f"{k:>12s}" for k in (*STAGES, "total")))
    for name, r in results.items():
        print(f"{name:36s}" + "".join(f"{r[k]:12.3f}" for k in (*STAGES, "total")))
    bare = bare_loop(pipe, args.seconds, args.repeats)
    den = results["t2v distill 256p"]["denoise"]
    print(f"\ndistilled denoise {den:.3f} s vs bare 8-forward DiT loop {bare:.3f} s: pipeline overhead x{den / bare:.2f}")
    if not args.skip_checkpoint:
        load, raw, size = bench_checkpoint(pipe)
        print(f"tiny checkpoint ({size / 2**20:.1f} MiB): from_pretrained {load:.2f} s vs raw read {raw:.3f} s "
              f"(x{load / max(raw, 1e-9):.0f}; includes validation, sha256 and library codec construction)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
