"""Stage offload policies, compared by what decides between them without a GPU: bytes moved
between host and device per clip over a realistic sequence, and the per-call cost of the hooks.

    python benchmarks/model_offload.py [--distill-clips 8] [--gpu-gib 80] [--pcie-gbs 25]

The sequence of stage uses (which stages each render step asks for, in order, and how many
forwards each stage runs) is recorded from real tiny renders: N distilled 256p clips, then one
540p SR clip. The byte counts are those of the full-size stages, built from the released configs
on the meta device (DiTs with bf16 block linears, T5Gemma-9B encoder bf16, VAEs fp32). Policies:

- stage LRU (ours, `model.offload.StageOffload`): whole stages stay on the device, least
  recently used first out, while they fit 70% of the GPU's memory;
- model offload (accelerate `cpu_offload_with_hook` chained, which is what diffusers'
  `enable_model_cpu_offload` installs): one model on the device at a time, the previous one
  leaves when the next is called, all leave at the end of each clip;
- sequential offload (accelerate `cpu_offload`, diffusers `enable_sequential_cpu_offload`): the
  weights stay on the host and stream in for every forward.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import HappyHorsePipeline, RenderRequest  # noqa: E402
from model.codecs import full_video_vae_config  # noqa: E402
from model.config import full_dit_config  # noqa: E402
from model.loading import WEIGHTS_SHARE_OF_GPU, meta_dit  # noqa: E402
from model.offload import StageOffload, module_bytes  # noqa: E402

STAGES = ("text_encoder", "distill", "540p_sr", "video_vae", "audio_vae")


def full_stage_bytes() -> dict[str, int]:
    """Bytes of each full-size stage as `from_pretrained` places it (meta device: no memory)."""
    from diffusers import AutoencoderKLWan, AutoencoderOobleck
    from transformers import T5GemmaConfig, T5GemmaEncoderModel, T5GemmaModuleConfig

    sizes = {stage: module_bytes(meta_dit(full_dit_config(stage), torch.bfloat16)) for stage in ("distill", "540p_sr")}
    enc = T5GemmaModuleConfig(vocab_size=256000, hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                              num_attention_heads=16, num_key_value_heads=8, head_dim=256)   # T5Gemma 9B-9B encoder
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        te = T5GemmaEncoderModel(T5GemmaConfig(encoder=enc, decoder=enc, vocab_size=256000, is_encoder_decoder=False))
        sizes["text_encoder"] = module_bytes(te.to(torch.bfloat16))
        sizes["video_vae"] = module_bytes(AutoencoderKLWan(**full_video_vae_config()))
        sizes["audio_vae"] = module_bytes(AutoencoderOobleck())
    return sizes


def record_sequence(distill_clips: int, seconds: float) -> list[dict]:
    """Per clip: the stage uses in order (tuples of stage names) and the forwards per stage."""
    pipe = HappyHorsePipeline.tiny(seed=0)
    pipe.offload = StageOffload(pipe.device, 0)          # CPU: moves are no-ops, the uses are what we record
    names = {id(pipe.text_encoder.model): "text_encoder", id(pipe.video_codec.vae): "video_vae",
             id(pipe.audio_codec.vae): "audio_vae", **{id(d): s for s, d in pipe.dits.items()}}
    clip: dict = {}
    use = pipe.offload.use

    def recording_use(*modules):
        clip["uses"].append(tuple(names[id(m)] for m in modules))
        for m in modules:
            clip["forwards"][names[id(m)]] = clip["forwards"].get(names[id(m)], 0)
        return use(*modules)

    def count_forward(stage):
        def hook(*_):
            clip["forwards"][stage] = clip["forwards"].get(stage, 0) + 1
        return hook

    pipe.offload.use = recording_use
    pipe.text_encoder.model.register_forward_pre_hook(count_forward("text_encoder"))
    for stage, dit in pipe.dits.items():
        dit.register_forward_pre_hook(count_forward(stage))
    clips = []
    for resolution in ["256p"] * distill_clips + ["540p"]:
        clip = {"resolution": resolution, "uses": [], "forwards": {}}
        pipe(RenderRequest(prompt="A horse speaks to camera.", seconds=seconds, seed=len(clips), resolution=resolution))
        for vae in ("video_vae", "audio_vae"):          # VAEs run encode/decode, not forward: one pass per use
            if vae in clip["forwards"]:
                clip["forwards"][vae] = sum(vae in u for u in clip["uses"])
        clips.append(clip)
    return clips


def stage_lru(clips, sizes, budget) -> list[int]:
    moved = [0]
    offload = StageOffload(torch.device("meta"), budget, size_of=sizes.__getitem__,
                           move=lambda stage, device: moved.__setitem__(0, moved[0] + sizes[stage]))
    per_clip = []
    for clip in clips:
        moved[0] = 0
        for use in clip["uses"]:
            with offload.use(*use):
                pass
        per_clip.append(moved[0])
    return per_clip


def model_offload(clips, sizes) -> list[int]:
    per_clip = []
    for clip in clips:
        moved, on_device = 0, None
        for use in clip["uses"]:
            for stage in use:
                if stage != on_device:
                    moved += sizes[stage] + (sizes[on_device] if on_device else 0)
                    on_device = stage
        per_clip.append(moved + (sizes[on_device] if on_device else 0))
    return per_clip


def sequential_offload(clips, sizes) -> list[int]:
    return [sum(sizes[stage] * n for stage, n in clip["forwards"].items()) for clip in clips]


class _Holder(nn.Module):
    """A stage whose forward does nothing, so a call measures the hook alone."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return x


def hook_overhead_us(calls: int = 2000) -> dict[str, float]:
    """Per-call microseconds on CPU with the stage already resident (the common case)."""
    from accelerate import cpu_offload_with_hook

    from model.config import tiny_dit_config
    from model.dit import DiT

    def per_call(fn):
        fn()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t0) / calls * 1e6

    x = torch.zeros(4)
    plain = _Holder(DiT(tiny_dit_config()))
    ours = StageOffload(torch.device("cpu"), 1 << 62)

    def with_ours():
        with ours.use(plain):
            plain(x)

    hooked, _ = cpu_offload_with_hook(_Holder(DiT(tiny_dit_config())), execution_device=torch.device("cpu"))
    base = per_call(lambda: plain(x))
    return {"stage LRU (ours)": per_call(with_ours) - base, "accelerate cpu_offload_with_hook": per_call(lambda: hooked(x)) - base}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--distill-clips", type=int, default=8)
    p.add_argument("--seconds", type=float, default=0.4, help="tiny clip length used to record the sequence")
    p.add_argument("--gpu-gib", type=float, default=80.0, help="device memory (80: H100; 141: H200)")
    p.add_argument("--pcie-gbs", type=float, default=25.0, help="host<->device GB/s (PCIe 4.0 x16 ~25, 5.0 ~50)")
    args = p.parse_args(argv)
    sizes = full_stage_bytes()
    print("full-size stages (GB): " + ", ".join(f"{s} {sizes[s] / 1e9:.1f}" for s in STAGES))
    clips = record_sequence(args.distill_clips, args.seconds)
    budget = int(WEIGHTS_SHARE_OF_GPU * args.gpu_gib * 2**30)
    policies = {"stage LRU (ours)": stage_lru(clips, sizes, budget),
                "model offload (accelerate/diffusers)": model_offload(clips, sizes),
                "sequential offload (accelerate)": sequential_offload(clips, sizes)}
    n = args.distill_clips
    print(f"\nbytes moved host<->device, {n} distill 256p clips then one 540p SR clip; {args.gpu_gib:g} GiB GPU, "
          f"budget {WEIGHTS_SHARE_OF_GPU:.0%}; seconds at {args.pcie_gbs:g} GB/s")
    print(f"{'policy':40s}{'1st clip GB':>13s}{'next distill GB':>17s}{'SR clip GB':>12s}{'total GB':>10s}"
          f"{'s/distill clip':>16s}{'total s':>9s}")
    for name, per_clip in policies.items():
        steady = per_clip[1:n] or per_clip[:1]
        mean_steady = sum(steady) / len(steady)
        total = sum(per_clip)
        print(f"{name:40s}{per_clip[0] / 1e9:13.1f}{mean_steady / 1e9:17.1f}{per_clip[-1] / 1e9:12.1f}"
              f"{total / 1e9:10.1f}{mean_steady / 1e9 / args.pcie_gbs:16.2f}{total / 1e9 / args.pcie_gbs:9.1f}")
    print("\nper-call hook overhead on CPU, stage already on the device (us): " +
          ", ".join(f"{k} {v:.1f}" for k, v in hook_overhead_us().items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
