"""Staged renders, model level: what storing and loading a stage result costs against the stage's
own compute, on the tiny preset at its largest size (1080p), measured side by side in one run,
and projected for the full-size model with the published H100 stage times.

Storing = `StageResult.to_bytes()` (device -> CPU, safetensors); loading = `StageResult.from_bytes`
plus the check a resume makes (`stage_key_inputs` of the request, shapes). The catalog's put/get
of those bytes on a store is not included (the catalog part of issue 13 adds it, in bytes/s).

    python benchmarks/staged.py [--seconds 5] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import HappyHorsePipeline, RenderRequest, StageResult  # noqa: E402
from model.config import PipelineConfig, full_dit_config  # noqa: E402
from model.geometry import FULL_TIERS, output_size  # noqa: E402
from model.request import latent_lengths  # noqa: E402
from model.stages import check_fits  # noqa: E402

PROMPT = "A horse speaks to camera in warm light. Dialogue: <Ann, English>: \"We ride at dawn.\""
# Published per-stage H100 seconds for a 5 s clip (issue 13; benchmarks/model_gpu.py checks the DiT parts).
PUBLISHED_S = {"base": 1.6, "sr": 31.0}
FULL_TEXT_TOKENS = 640        # the text encoder's cap: the largest embeddings a base result carries


def median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def measure(pipe: HappyHorsePipeline, request: RenderRequest, repeats: int) -> list[dict]:
    """For each stored stage (base, sr) of `request`: its compute seconds (median of `repeats`),
    result bytes, and store (to_bytes) / load (from_bytes + resume check) seconds."""
    rows = []
    start = None
    for stage in ("base", "sr"):
        runs = [pipe.render_until(request, stage, start=start) for _ in range(repeats)]
        compute = statistics.median(r.timings["text_encode"] + r.timings["denoise"] + r.timings["sr"] for r in runs)
        result = runs[-1]
        store_s, data = median_time(result.to_bytes, repeats)

        def load():
            loaded = StageResult.from_bytes(data)
            check_fits(loaded, request, pipe.stage_fingerprints, pipe.device.type)   # what a resume checks
            return loaded

        load_s, _ = median_time(load, repeats)
        rows.append({"stage": stage, "bytes": len(data), "compute_s": compute, "store_s": store_s, "load_s": load_s})
        start = result
    return rows


def full_size_result(stage: str, seconds: float) -> StageResult:
    """A stage result with the full-size model's shapes (16:9, float32 latents; a base result
    also carries text embeddings at the token cap and a CUDA generator state). Random values:
    storing and loading cost does not depend on them."""
    import torch

    config, dit = PipelineConfig(), full_dit_config("distill")
    Ta, T = latent_lengths(seconds, config.fps)
    w, h = output_size(FULL_TIERS, "256p" if stage == "base" else "1080p", "16:9")
    video = torch.randn(1, config.z_dim, T, h // config.vae_stride[1], w // config.vae_stride[2])
    audio = torch.randn(1, Ta, dit.audio_in_channels)
    if stage == "sr":
        return StageResult("sr", {"stage": "sr"}, video, audio, device_type="cuda")
    return StageResult("base", {"stage": "base"}, video, audio, torch.randn(FULL_TEXT_TOKENS, dit.text_in_channels),
                       torch.zeros(16, dtype=torch.uint8), "cuda")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    pipe = HappyHorsePipeline.tiny(seed=0)
    request = RenderRequest(prompt=PROMPT, seconds=args.seconds, seed=1, resolution="1080p")
    rows = measure(pipe, request, args.repeats)
    print(f"tiny preset, 1080p 16:9, {args.seconds:g} s clip, medians of {args.repeats} (CPU):")
    print(f"{'stage result':14s}{'bytes':>12s}{'compute s':>12s}{'store s':>10s}{'load s':>10s}"
          f"{'store+load':>12s}{'MB/s':>9s}")
    for r in rows:
        io = r["store_s"] + r["load_s"]
        print(f"{r['stage']:14s}{r['bytes']:12,d}{r['compute_s']:12.3f}{r['store_s']:10.4f}{r['load_s']:10.4f}"
              f"{100 * io / r['compute_s']:11.2f}%{r['bytes'] / io / 1e6:9.0f}")
    print("\nfull-size shapes, 1080p 16:9, 5 s clip (stored from the CPU; no resume check):")
    for stage, published in PUBLISHED_S.items():
        result = full_size_result(stage, 5.0)
        store_s, data = median_time(result.to_bytes, args.repeats)
        load_s, _ = median_time(lambda: StageResult.from_bytes(data), args.repeats)
        io = store_s + load_s
        print(f"{stage:14s}{len(data):12,d} bytes  store {store_s:.3f} s + load {load_s:.3f} s "
              f"({len(data) / io / 1e6:.0f} MB/s) = {100 * io / published:.2f}% of the published {published:g} s "
              "H100 stage")
    return 0


if __name__ == "__main__":
    sys.exit(main())
