"""Full-size DiT timing on one GPU with random bf16 weights (compute does not depend on values).

Times (1) a 256p / 5 s distilled render (8 DiT forwards + re-noising updates) against the published
1.6 s, and (2) one 1080p SR step (local attention, 65 280 video tokens) against the published 31 s
for 5 steps, with peak GPU memory per stage. The distilled DiT is offloaded to the CPU before the SR
DiT is built, as a 1080p render must fit one 80 GB GPU (two resident DiTs alone are 61 GB).
The T5Gemma text encoder and the VAEs are not part of the published model-time figures and are not
loaded; text tokens are random embeddings of a typical prompt length.

    python benchmarks/model_gpu.py                     # needs CUDA; exits cleanly without it
    python benchmarks/model_gpu.py --device cpu --tiny # smoke run of the same code paths on CPU
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import full_dit_config, tiny_dit_config  # noqa: E402
from model.dit import DiT, param_count  # noqa: E402
from model.packing import build_coords, patchify, unpatchify  # noqa: E402
from model.schedulers import distill_step, flow_sigmas, make_unipc, sr_noise_coefficients  # noqa: E402

PUBLISHED = {"distill_256p_5s": 1.6, "sr_1080p_5steps": 31.0}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gb(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


@torch.no_grad()
def random_dit(cfg, device) -> DiT:
    """Allocate on the device without a CPU copy and fill with small random values."""
    with torch.device("meta"):
        dit = DiT(cfg)
    dit = dit.to_empty(device=device)
    for name, p in dit.named_parameters():
        if "norm" in name:
            p.zero_()
        else:
            p.normal_(0.0, 0.02)
    i = torch.arange(cfg.rope_bands, dtype=torch.float64, device=device)
    dit.adapter.rope.bands.copy_((1.0 / cfg.rope_base ** (i / cfg.rope_bands)).float())
    return dit.eval()


def velocity(dit, video, audio, text, coords):
    _, _, T, h, w = video.shape
    v, a = dit(patchify(video), audio[0], text, coords, frame_tokens=(h // 2) * (w // 2))
    return unpatchify(v, (T, h // 2, w // 2)), a[None]


@torch.no_grad()
def run(args) -> dict:
    device = torch.device(args.device)
    tiny = args.tiny
    cfg_d = tiny_dit_config("distill") if tiny else full_dit_config("distill")
    cfg_s = tiny_dit_config("1080p_sr") if tiny else full_dit_config("1080p_sr")
    seconds = 1.0 if tiny else args.seconds
    n = int(round(seconds * 25))
    Ta, T = n + 1, n // 4 + 1
    z = cfg_d.video_in_channels // 4
    base_hw = (4, 8) if tiny else (256 // 16, 448 // 16)
    sr_hw = (8, 14) if tiny else (1088 // 16, 1920 // 16)
    text_len = 16 if tiny else args.text_tokens
    gen = torch.Generator(device=device).manual_seed(0)
    rnd = lambda *shape: torch.randn(shape, generator=gen, device=device)
    results = {}

    reset_peak(device)
    t0 = time.perf_counter()
    dit = random_dit(cfg_d, device)
    sync(device)
    print(f"distill DiT: {param_count(dit) / 1e9:.3f} B params built on {device} in {time.perf_counter() - t0:.1f} s")
    text = rnd(text_len, cfg_d.text_in_channels)
    audio = rnd(1, Ta, cfg_d.audio_in_channels)
    video = rnd(1, z, T, *base_hw)
    coords = build_coords((T, base_hw[0] // 2, base_hw[1] // 2), Ta, text_len, cfg_d.coords_style).to(device)
    sigmas = flow_sigmas(8)
    for rep in range(args.warmup + 1):          # first pass warms kernels up; the last is timed
        v, a = video.clone(), audio.clone()
        reset_peak(device)
        sync(device)
        t0 = time.perf_counter()
        for i in range(8):
            vv, va = velocity(dit, v, a, text, coords)
            s, s1 = float(sigmas[i]), float(sigmas[i + 1])
            v = distill_step(v, vv, s, s1, rnd(*v.shape) if s1 else None)
            a = distill_step(a, va, s, s1, rnd(*a.shape) if s1 else None)
        sync(device)
        results["distill_256p"] = time.perf_counter() - t0
    results["distill_256p_peak_gb"] = peak_gb(device)
    tokens = T * base_hw[0] * base_hw[1] // 4 + Ta + text_len
    print(f"distilled {seconds:g} s at {base_hw[1] * 16}x{base_hw[0] * 16}: {tokens} tokens, 8 forwards "
          f"{results['distill_256p']:.2f} s (published {PUBLISHED['distill_256p_5s']} s), "
          f"peak GPU memory {results['distill_256p_peak_gb']:.1f} GiB")

    t0 = time.perf_counter()
    dit.to("cpu")                               # offload the idle stage before the SR DiT arrives
    if device.type == "cuda":
        torch.cuda.empty_cache()
    sync(device)
    results["offload_distill"] = time.perf_counter() - t0
    print(f"offloaded distill DiT to CPU in {results['offload_distill']:.1f} s")

    reset_peak(device)
    sr = random_dit(cfg_s, device)
    zl = torch.nn.functional.interpolate(v, size=(T, *sr_hw), mode="trilinear", align_corners=True)
    ca, cn = sr_noise_coefficients()
    zl = ca * zl + cn * rnd(*zl.shape)
    sa = 0.7 * rnd(*a.shape) + 0.3 * a
    coords = build_coords((T, sr_hw[0] // 2, sr_hw[1] // 2), Ta, text_len, cfg_s.coords_style).to(device)
    sched = make_unipc(5, device=device)
    for rep in range(args.warmup + 1):
        reset_peak(device)
        sync(device)
        t0 = time.perf_counter()
        vv, _ = velocity(sr, zl, sa, text, coords)
        out = sched.step(vv, sched.timesteps[0], zl).prev_sample
        sync(device)
        results["sr_1080p_step"] = time.perf_counter() - t0
        sched = make_unipc(5, device=device)
    results["sr_1080p_peak_gb"] = peak_gb(device)
    tokens = T * sr_hw[0] * sr_hw[1] // 4 + Ta + text_len
    print(f"1080p SR: {tokens} tokens, {len(cfg_s.local_attn_layers)} local-attention layers, one step "
          f"{results['sr_1080p_step']:.2f} s; x5 = {5 * results['sr_1080p_step']:.1f} s "
          f"(published {PUBLISHED['sr_1080p_5steps']} s for 5 steps), peak GPU memory "
          f"{results['sr_1080p_peak_gb']:.1f} GiB")
    assert torch.isfinite(out).all()
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny configs and sizes (smoke test of the code paths)")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--text-tokens", type=int, default=300)
    p.add_argument("--warmup", type=int, default=1, help="untimed passes before the timed one")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("model_gpu: CUDA is not available on this machine; nothing to time "
              "(use --device cpu --tiny for a smoke run).")
        return 0
    if args.device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name(torch.device(args.device))}")
    if args.device == "cpu":
        torch.set_num_threads(1)      # tiny ops: threads only add OpenMP spin-wait on a shared CPU
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
