"""Staged renders: what previews and promotes save, and what keeping stage results costs.

1. Campaign: one variant with 4 takes of which 1 is kept, on the tiny preset through the real
   actor code path (`RenderActor` in this process, a file:// store): staged — 4 previews at 256p
   that keep their base latents, then 1 promote to 1080p — versus every take at 1080p. Device
   seconds (the model's own stage timings) and actor wall time (with encode, upload and stage
   result store/load) per delivered 1080p clip, the two runs alternating, medians; then the same
   campaign projected with the published H100 stage times for a 5 s clip.
2. Storing and loading a stage result versus the stage's own compute: `to_bytes` / `from_bytes`
   plus the check a resume makes, on the tiny preset at its largest size (1080p); then the
   catalog's put and load of those bytes (`Store.stage_results`) on file:// and moto S3, in bytes
   per second, for the tiny results and for full-size shapes against the published stage times.

    python benchmarks/staged.py [--seconds 5] [--repeats 5] [--takes 4] [--campaign-seconds 1] [--no-s3]
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import socket
import statistics
import sys
import tempfile
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
PUBLISHED_S = {"base": 1.6, "sr": 31.0, "decode": 5.8}
FULL_TEXT_TOKENS = 640        # the text encoder's cap: the largest embeddings a base result carries
DEVICE_STAGES = ("text_encode", "denoise", "sr", "decode")


def median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


# ---- 1. the campaign: previews + one promote vs every take at 1080p ---------------------------

def campaign(takes: int, seconds: float, repeats: int) -> dict[str, dict[str, float]]:
    """Median device and wall seconds per delivered 1080p clip (one variant: `takes` takes, one kept),
    staged and straight, the two alternating so that machine load hits both alike."""
    from catalog import render_key
    from horse_actors import ModelSpec, RenderActor, RenderJob, StoreTarget

    actor = RenderActor(ModelSpec("tiny", device="cpu", warmup_seconds=seconds), StoreTarget(tempfile.mkdtemp()))
    runs: dict[str, list[tuple[float, float]]] = {"staged": [], "straight": []}
    for repeat in range(repeats):
        for mode in runs:
            # a fresh prompt per repeat and mode: the straight renders must not find the previews'
            # base latents (same request, same stage key), nor a repeat those of an earlier one
            request = RenderRequest(prompt=f"{PROMPT} ({mode}, repeat {repeat})", seconds=seconds, seed=0,
                                    resolution="256p")

            def job(take: int, resolution: str, retention: str = "retry") -> RenderJob:
                r = dataclasses.replace(request, seed=100 + take, resolution=resolution)
                key = render_key({"bench": mode, "repeat": repeat, "take": take, "resolution": resolution})
                return RenderJob(key, r, "bench", "s1", f"t{take}", stage_retention=retention)

            jobs = ([job(t, "256p", "preview") for t in range(1, takes + 1)] + [job(1, "1080p")]
                    if mode == "staged" else [job(t, "1080p") for t in range(1, takes + 1)])
            outcomes = [actor.render(j) for j in jobs]
            assert all(o.ok for o in outcomes), [o.error_message for o in outcomes if not o.ok]
            if mode == "staged":
                assert outcomes[-1].resumed_from == "base", "the promote starts from the preview's base latent"
            else:
                assert all(o.resumed_from is None for o in outcomes), "a straight render starts from noise"
            runs[mode].append((sum(o.timings[s] for o in outcomes for s in DEVICE_STAGES),
                               sum(o.duration_s for o in outcomes)))
    return {mode: {"device_s": statistics.median(d for d, _ in rows), "wall_s": statistics.median(w for _, w in rows)}
            for mode, rows in runs.items()}


def projected(takes: int, store_load_s: float) -> dict[str, float]:
    """H100 seconds per delivered 1080p clip from the published stage times (5 s clip). A preview's
    decode is not published: it is taken as the 1080p decode scaled by the 256p/1080p pixel count."""
    w256, h256 = output_size(FULL_TIERS, "256p", "16:9")
    w1080, h1080 = output_size(FULL_TIERS, "1080p", "16:9")
    decode_256p = PUBLISHED_S["decode"] * (w256 * h256) / (w1080 * h1080)
    full = PUBLISHED_S["base"] + PUBLISHED_S["sr"] + PUBLISHED_S["decode"]
    staged = takes * (PUBLISHED_S["base"] + decode_256p) + PUBLISHED_S["sr"] + PUBLISHED_S["decode"] + store_load_s
    return {"staged": staged, "straight": takes * full, "decode_256p": decode_256p}


# ---- 2. storing and loading stage results -------------------------------------------------------

def measure(pipe: HappyHorsePipeline, request: RenderRequest, repeats: int) -> list[dict]:
    """For each stored stage (base, sr) of `request`: its compute seconds (median of `repeats`),
    its result (for the store part), bytes, and store (to_bytes) / load (from_bytes + resume
    check) seconds."""
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
        rows.append({"stage": stage, "data": data, "compute_s": compute, "store_s": store_s, "load_s": load_s})
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


def catalog_put_load(store, stage: str, data: bytes, repeats: int) -> tuple[float, float]:
    """Median seconds to put a stage result's bytes into `store` (blob + record, each time new
    content) and to look it up and load it back."""
    import hashlib

    from catalog import render_key

    puts, loads = [], []
    for i in range(repeats):
        unique = data + hashlib.sha256(f"{time.time_ns()}-{i}".encode()).digest()  # a new blob each time
        key = render_key({"bench": stage, "n": time.time_ns(), "i": i})
        t0 = time.perf_counter()
        store.stage_results.put(key, stage, unique)
        puts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        record = store.stage_results.existing([key])[key]
        assert len(store.stage_results.load(record)) == len(unique)
        loads.append(time.perf_counter() - t0)
    return statistics.median(puts), statistics.median(loads)


def stores(use_s3: bool):
    """(name, Store) of the stores to measure on: a local folder, and moto's S3 server if asked."""
    from catalog import Store

    yield "file://", Store(tempfile.mkdtemp(prefix="horse-bench-"))
    if not use_s3:
        return
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        print("(moto not installed: no S3 row)")
        return
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    options = {"key": "bench", "secret": "bench", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                 aws_secret_access_key="bench").create_bucket(Bucket="bench")
    try:
        yield "s3:// (moto, loopback)", Store("s3://bench/staged", options)
    finally:
        server.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0, help="clip length for the stage result part")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--takes", type=int, default=4, help="takes per variant in the campaign part (1 kept)")
    p.add_argument("--campaign-seconds", type=float, default=1.0, help="clip length for the campaign part")
    p.add_argument("--campaign-repeats", type=int, default=3)
    p.add_argument("--no-s3", action="store_true", help="skip the moto S3 row")
    args = p.parse_args(argv)

    print(f"1. campaign: 1 variant, {args.takes} takes, 1 kept at 1080p; tiny preset on CPU, "
          f"{args.campaign_seconds:g} s clips, medians of {args.campaign_repeats}")
    measured = campaign(args.takes, args.campaign_seconds, args.campaign_repeats)
    print(f"{'per delivered 1080p clip':34s}{'device s':>10s}{'wall s':>10s}")
    for mode, label in (("straight", f"every take at 1080p ({args.takes}x)"),
                        ("staged", f"staged ({args.takes} previews + 1 promote)")):
        print(f"{label:34s}{measured[mode]['device_s']:10.2f}{measured[mode]['wall_s']:10.2f}")
    print(f"staged saves {measured['straight']['device_s'] / measured['staged']['device_s']:.2f}x device time, "
          f"{measured['straight']['wall_s'] / measured['staged']['wall_s']:.2f}x wall time (tiny: the VAE decode, "
          "not the SR DiT, dominates its 1080p render)")

    pipe = HappyHorsePipeline.tiny(seed=0)
    request = RenderRequest(prompt=PROMPT, seconds=args.seconds, seed=1, resolution="1080p")
    rows = measure(pipe, request, args.repeats)
    full = {stage: full_size_result(stage, 5.0).to_bytes() for stage in ("base", "sr")}
    per_store = [(name, {stage: catalog_put_load(store, stage, data, args.repeats) for stage, data in
                         [*((f"tiny {r['stage']}", r["data"]) for r in rows), *full.items()]})
                 for name, store in stores(not args.no_s3)]
    full_base_io = sum(per_store[0][1]["base"])  # a promote loads the base once; a preview stores it once

    proj = projected(args.takes, full_base_io)
    print(f"\n   projected on one H100 (published 5 s clip: base {PUBLISHED_S['base']:g} s, SR 1080p "
          f"{PUBLISHED_S['sr']:g} s, decode {PUBLISHED_S['decode']:g} s; a preview's decode "
          f"~{proj['decode_256p']:.2f} s by pixel count; base result store+load on file:// {full_base_io:.3f} s):")
    print(f"   every take at 1080p {proj['straight']:.1f} GPU-s, staged {proj['staged']:.1f} GPU-s per delivered "
          f"1080p clip: {proj['straight'] / proj['staged']:.2f}x")

    print(f"\n2. stage results, tiny preset at 1080p 16:9, {args.seconds:g} s clip, medians of {args.repeats} (CPU):")
    print(f"{'stage result':14s}{'bytes':>12s}{'compute s':>12s}{'store s':>10s}{'load s':>10s}"
          f"{'store+load':>12s}{'MB/s':>9s}")
    for r in rows:
        io = r["store_s"] + r["load_s"]
        print(f"{r['stage']:14s}{len(r['data']):12,d}{r['compute_s']:12.3f}{r['store_s']:10.4f}{r['load_s']:10.4f}"
              f"{100 * io / r['compute_s']:11.2f}%{len(r['data']) / io / 1e6:9.0f}")
    print("\n   full-size shapes, 1080p 16:9, 5 s clip (stored from the CPU; no resume check):")
    for stage in ("base", "sr"):
        result = full_size_result(stage, 5.0)
        store_s, data = median_time(result.to_bytes, args.repeats)
        load_s, _ = median_time(lambda: StageResult.from_bytes(data), args.repeats)
        io = store_s + load_s
        print(f"   {stage:11s}{len(data):12,d} bytes  store {store_s:.3f} s + load {load_s:.3f} s "
              f"({len(data) / io / 1e6:.0f} MB/s) = {100 * io / PUBLISHED_S[stage]:.2f}% of the published "
              f"{PUBLISHED_S[stage]:g} s H100 stage")

    compute = {f"tiny {r['stage']}": r["compute_s"] for r in rows} | {s: PUBLISHED_S[s] for s in full}
    print("\n   the catalog's put (blob + record) and lookup + load of those bytes:")
    print(f"   {'store':24s}{'result':11s}{'bytes':>12s}{'put s':>9s}{'load s':>9s}{'put MB/s':>10s}"
          f"{'load MB/s':>11s}{'of stage':>10s}")
    for name, results in per_store:
        for stage, (put_s, load_s) in results.items():
            size = len(full.get(stage) or next(r["data"] for r in rows if f"tiny {r['stage']}" == stage))
            print(f"   {name:24s}{stage:11s}{size:12,d}{put_s:9.4f}{load_s:9.4f}{size / put_s / 1e6:10.1f}"
                  f"{size / load_s / 1e6:11.1f}{100 * (put_s + load_s) / compute[stage]:9.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
