"""Adapter training, the torch part: brand clips -> encodings (stored by the caller, keyed by
`encoding_key_inputs`) -> the flow-matching loss of a frozen DiT with one trainable adapter ->
checkpoints in safetensors. No Ray here:
`horse_actors.training` runs these steps data-parallel on Ray Train workers.

Objective (the model's own, spec §4.1): x_sigma = (1 - sigma) x0 + sigma eps, target velocity
v = eps - x0, sigma = shift*u / (1 + (shift-1) u) with u ~ U(0, 1) (the sampler's shifted
schedule); loss = MSE(video velocity) + MSE(audio velocity), the text states being the clean
condition. Every random draw comes from a generator seeded by (seed, step, rank), so a run resumed
from a checkpoint takes the same steps as one that never stopped.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load, load_file, save, save_file
from torch import nn

from .adapters import Adapter, AdapterConfig
from .dit import DiT
from .errors import AdapterError
from .pipeline import torch_threads
from .sampling import noise, velocity

ENCODING_FORMAT = 2
ENCODERS = ("video_vae", "audio_vae", "text_encoder")   # the stack stages an encoding uses
TRAIN_NAME = "trainee"               # the peft adapter name while training (not an nn.Module attribute)
OPTIMIZER_NAME = "optimizer.safetensors"
STATE_NAME = "state.json"


@dataclass(frozen=True)
class BrandClip:
    """One training clip: F = 4(T-1)+1 frames at the model's fps whose sides are multiples of 32,
    the audio that goes with them, and a caption in the model's prompt format."""
    frames: np.ndarray              # uint8 (F, H, W, 3)
    audio: np.ndarray               # float32 (channels, samples)
    sample_rate: int
    caption: str


def encoding_key_inputs(clip_sha256: str, caption: str, width: int, height: int, fps: int, max_frames: int,
                        stage_fingerprints: dict[str, str]) -> dict:
    """Everything a clip's encoding depends on, as plain values: hash it with the render-key rule
    (`catalog.render_key`) for the key its encoding is stored under. The clip by content (its
    file's sha256), the caption, the size and rate it is read at, and the fingerprints of the three
    encoders only, so another DiT on the same encoders reuses the encodings."""
    missing = [s for s in ENCODERS if s not in stage_fingerprints]
    if missing:
        raise ValueError(f"the model has no {missing[0]!r} fingerprint (has {sorted(stage_fingerprints)})")
    return {"kind": "horse.brand_clip_encoding", "format": ENCODING_FORMAT, "clip_sha256": clip_sha256,
            "caption": caption, "width": width, "height": height, "fps": fps, "max_frames": max_frames,
            "encoders": {s: stage_fingerprints[s] for s in ENCODERS}}


def encoding_to_bytes(encoding: dict[str, torch.Tensor]) -> bytes:
    return save(encoding, metadata={"format": f"horse.brand_clip_encoding/{ENCODING_FORMAT}"})


def encoding_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """An encoding stored by `encoding_to_bytes` (safetensors only); refuses anything else."""
    try:
        tensors = load(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"not a stored clip encoding ({exc})") from None
    if set(tensors) != {"video", "audio", "text"}:
        raise ValueError(f"not a stored clip encoding (tensors {sorted(tensors)})")
    return tensors


def encode_clip(pipe, clip: BrandClip, seed: int = 0) -> dict[str, torch.Tensor]:
    """video (1, z, T, h, w) and audio (1, Ta, C) latents and text states (Lt, D), fp32 on the CPU.
    The audio posterior is sampled (as the model's TA2V encode) from a generator seeded by `seed`."""
    f, h, w, _ = clip.frames.shape
    if clip.frames.dtype != np.uint8 or (f - 1) % 4 or h % 32 or w % 32:
        raise ValueError(f"clip frames must be uint8 (4k+1, H, W, 3) with H, W multiples of 32, got "
                         f"{clip.frames.dtype} {list(clip.frames.shape)}")
    dev = pipe.device
    modules = (pipe.video_codec.vae, pipe.audio_codec.vae, pipe.text_encoder.model)
    threads = pipe.cpu_threads if dev.type == "cpu" else None
    with torch.no_grad(), torch_threads(threads), (pipe.offload.use(*modules) if pipe.offload else contextlib.nullcontext()):
        pixels = torch.from_numpy(np.ascontiguousarray(clip.frames)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
        video = pipe.video_codec.encode(pixels.to(dev))
        gen = torch.Generator(device=dev).manual_seed(seed)
        audio = pipe.audio_codec.encode(torch.from_numpy(clip.audio).to(dev), clip.sample_rate, gen)
        text = pipe.text_encoder.encode(clip.caption)
    return {k: v.float().cpu().contiguous() for k, v in {"video": video, "audio": audio, "text": text}.items()}


class FlowMatchingObjective(nn.Module):
    """The training loss as a module, so that DistributedDataParallel can wrap it. forward takes
    a batch of draws (see `draw`) and returns their mean loss."""

    def __init__(self, dit: DiT):
        super().__init__()
        self.dit = dit

    def forward(self, batch: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        losses = []
        for d in batch:
            x_video = (1 - d["sigma"]) * d["video"] + d["sigma"] * d["noise_video"]
            x_audio = (1 - d["sigma"]) * d["audio"] + d["sigma"] * d["noise_audio"]
            v_video, v_audio = velocity(self.dit, x_video, x_audio, d["text"])
            losses.append(F.mse_loss(v_video, d["noise_video"] - d["video"]) +
                          F.mse_loss(v_audio, d["noise_audio"] - d["audio"]))
        return torch.stack(losses).mean()


def draw(example: dict[str, torch.Tensor], gen: torch.Generator, shift: float) -> dict[str, torch.Tensor]:
    """One training sample of an encoded clip: a noise level and the noise."""
    u = torch.rand((), generator=gen, device=gen.device)
    sigma = shift * u / (1 + (shift - 1) * u)
    return {**example, "sigma": sigma, "noise_video": noise(example["video"].shape, gen),
            "noise_audio": noise(example["audio"].shape, gen)}


def step_generator(seed: int, step: int, rank: int, device: torch.device | str = "cpu") -> torch.Generator:
    digest = hashlib.sha256(f"{seed}/{step}/{rank}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def fixed_draw_loss(objective: nn.Module, examples: list[dict[str, torch.Tensor]], seed: int, shift: float) -> float:
    """The loss over every example with draws that depend only on `seed`: comparable before and
    after training (the per-step loss moves with its random noise levels)."""
    with torch.no_grad():
        gen = step_generator(seed, -1, -1, examples[0]["video"].device)
        return float(objective([draw(e, gen, shift) for e in examples]))


def train_step(objective: nn.Module, optimizer: torch.optim.Optimizer, examples: list[dict[str, torch.Tensor]],
               gen: torch.Generator, shift: float) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = objective([draw(e, gen, shift) for e in examples])
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def trainable_adapter(dit: DiT, config: AdapterConfig, seed: int) -> list[nn.Parameter]:
    """Inject a fresh adapter (A seeded, B zero) to train; returns its parameters. The rest of the
    DiT is frozen (peft)."""
    from .lora import inject
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject(dit, config, TRAIN_NAME, trainable=True)
    return [p for p in dit.parameters() if p.requires_grad]


def trained_adapter(dit: DiT, config: AdapterConfig) -> Adapter:
    from peft.functional import get_peft_model_state_dict
    return Adapter(config, get_peft_model_state_dict(dit, adapter_name=TRAIN_NAME))


def save_checkpoint(folder: str | Path, dit: DiT, config: AdapterConfig, optimizer: torch.optim.Optimizer,
                    state: dict) -> None:
    """The adapter (folder form), the optimizer's tensors (safetensors) and `state` (JSON: step,
    history, ...), everything a resumed run needs."""
    folder = Path(folder)
    trained_adapter(dit, config).save(folder)
    opt = optimizer.state_dict()
    save_file({f"{i}.{k}": v for i, s in opt["state"].items() for k, v in s.items()}, str(folder / OPTIMIZER_NAME))
    (folder / STATE_NAME).write_text(json.dumps({**state, "param_groups": opt["param_groups"]}))


def load_checkpoint(folder: str | Path, dit: DiT, config: AdapterConfig, optimizer: torch.optim.Optimizer) -> dict:
    """Restore what `save_checkpoint` wrote into a DiT carrying the training adapter of `config`
    (a checkpoint of another config or base DiT is refused); returns the state dict (without the
    optimizer's groups)."""
    from peft.functional import set_peft_model_state_dict
    folder = Path(folder)
    adapter = Adapter.load(folder)
    if adapter.config != config:
        raise AdapterError(f"{folder}: the checkpoint is of another adapter config or base DiT; "
                           f"train this one under a new run name")
    set_peft_model_state_dict(dit, adapter.tensors, adapter_name=TRAIN_NAME)
    state = json.loads((folder / STATE_NAME).read_text())
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in load_file(str(folder / OPTIMIZER_NAME)).items():
        i, field = key.split(".", 1)
        per_param.setdefault(int(i), {})[field] = t
    optimizer.load_state_dict({"state": per_param, "param_groups": state.pop("param_groups")})
    return state


def synthetic_brand_clips(n: int, width: int, height: int, seconds: float = 1.0, fps: int = 25,
                          sample_rate: int = 44100) -> list[BrandClip]:
    """`n` clips with one recognisable look (teal field, a drifting warm stripe, a low hum), for
    training the tiny preset in tests, benchmarks and the demo without any footage."""
    frames_n = 4 * (int(round(seconds * fps)) // 4) + 1
    t = np.arange(frames_n)[:, None, None]
    y, x = np.arange(height)[None, :, None], np.arange(width)[None, None, :]
    s = np.arange(int(round(seconds * sample_rate))) / sample_rate
    clips = []
    for k in range(n):
        shape = (frames_n, height, width)
        stripe = np.broadcast_to(np.abs(((x + 3 * t + 17 * k) % width) - width / 2) < width / 8, shape)
        r = np.where(stripe, 230, 20)
        g = np.broadcast_to(120 + 40 * np.sin((y + 2 * k) / 7.0), shape)
        b = np.broadcast_to(130 + t + 0 * x, shape)
        frames = np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8)
        hum = 0.2 * np.sin(2 * np.pi * (110 + 20 * k) * s)
        clips.append(BrandClip(frames, np.stack([hum, hum]).astype(np.float32), sample_rate,
                               f"A teal brand field with a warm stripe, take {k + 1}."))
    return clips
