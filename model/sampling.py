"""The sampling loops (spec §4): distilled 8-step with re-noising, UniPC with optional CFG, and the
super-resolution start (latent upsample + partial noising). Pure functions of a DiT, latents,
text states and a torch.Generator; the pipeline decides which loop runs where.

Every noise draw goes through `gen` in a fixed order, so a seed reproduces a clip bit for bit.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .config import PipelineConfig
from .dit import DiT
from .errors import RenderCancelled
from .packing import build_coords, patchify, unpatchify
from .schedulers import distill_step, flow_sigmas, flow_timesteps, make_unipc, sr_noise_coefficients, video_guidance

StopCheck = Callable[[], bool] | None


def noise(shape, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen, device=gen.device, dtype=torch.float32)


def check_stop(should_stop: StopCheck) -> None:
    if should_stop is not None and should_stop():
        raise RenderCancelled("render cancelled between steps")


def velocity(dit: DiT, video: torch.Tensor, audio: torch.Tensor, text: torch.Tensor):
    """One DiT forward on the packed [video | audio | text] sequence -> (video, audio) velocities."""
    _, _, T, h, w = video.shape
    grid = (T, h // 2, w // 2)
    coords = build_coords(grid, audio.shape[1], text.shape[0], dit.cfg.coords_style).to(video.device)
    v, a = dit(patchify(video), audio[0], text, coords, frame_tokens=grid[1] * grid[2])
    return unpatchify(v, grid), a[None]


def distill_loop(dit: DiT, video, audio, text, gen, config: PipelineConfig, image_latent, audio_fixed: bool,
                 should_stop: StopCheck):
    """8 steps: x0 estimate, then re-noised to the next sigma with fresh noise (video, then audio)."""
    sigmas = flow_sigmas(config.distill_steps, config.shift)
    for i in range(config.distill_steps):
        check_stop(should_stop)
        if image_latent is not None:
            video[:, :, :1] = image_latent
        v_vid, v_aud = velocity(dit, video, audio, text)
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        nv = noise(video.shape, gen) if s_next > 0 else None
        na = noise(audio.shape, gen) if s_next > 0 else None
        video = distill_step(video, v_vid, s, s_next, nv)
        if not audio_fixed:
            audio = distill_step(audio, v_aud, s, s_next, na)
    if image_latent is not None:
        video[:, :, :1] = image_latent
    return video, audio


def unipc_loop(dit: DiT, video, audio, text, neg_text, steps: int, config: PipelineConfig, image_latent,
               audio_fixed: bool, should_stop: StopCheck):
    """UniPC over video and audio (two scheduler instances). With neg_text, CFG: video scale 5
    while t > 500 then 2, audio scale 5. Fixed (TA2V) audio is never updated."""
    sv, sa = make_unipc(steps, config.shift, video.device), make_unipc(steps, config.shift, video.device)
    ts = flow_timesteps(steps, config.shift)
    for i in range(steps):
        check_stop(should_stop)
        if image_latent is not None:
            video[:, :, :1] = image_latent
        v_vid, v_aud = velocity(dit, video, audio, text)
        if neg_text is not None:
            u_vid, u_aud = velocity(dit, video, audio, neg_text)
            s = video_guidance(ts[i], config.video_cfg_high, config.video_cfg_low, config.video_cfg_switch_t)
            v_vid = u_vid + s * (v_vid - u_vid)
            v_aud = u_aud + config.audio_cfg * (v_aud - u_aud)
        video = sv.step(v_vid, sv.timesteps[i], video).prev_sample
        if not audio_fixed:
            audio = sa.step(v_aud, sa.timesteps[i], audio).prev_sample
    if image_latent is not None:
        video[:, :, :1] = image_latent
    return video, audio


def super_resolve(dit: DiT, video, audio, text, latent_hw: tuple[int, int], gen, config: PipelineConfig,
                  image_latent, audio_given: bool, should_stop: StopCheck):
    """Trilinear latent upsample to `latent_hw`, VP partial noising z = a z + sqrt(1-a^2) eps
    (a = 0.8389), audio tokens 0.7 eps + 0.3 base audio (the clean given audio in TA2V), then
    5 UniPC steps without CFG. Returns the SR video latent."""
    z = F.interpolate(video, size=(video.shape[2], *latent_hw), mode="trilinear", align_corners=True)
    a, b = sr_noise_coefficients(config.sr_noise_index)
    z = a * z + b * noise(z.shape, gen)
    eps_a = noise(audio.shape, gen)
    sr_audio = audio if audio_given else config.sr_audio_noise * eps_a + (1.0 - config.sr_audio_noise) * audio
    z, _ = unipc_loop(dit, z, sr_audio, text, None, config.sr_steps, config, image_latent, audio_given, should_stop)
    return z
