"""HappyHorsePipeline: text -> (video, audio) clip with the daVinci-MagiHuman stack (spec §4).

Stages (`model.stages`): base = text encode (T5Gemma) -> noise -> [TI2V image / TA2V audio
encode] -> distilled (8 steps, re-noising) or base (32 UniPC steps, CFG vs the negative prompt)
loop at 256p; sr = optional SR loop (540p, or 1080p with local attention; 5 UniPC steps); decode =
Wan2.2 VAE decode + Oobleck decode. A render can stop after base or sr and start from the result.
Decoded audio (Ta * 1764 samples at 44.1 kHz) is trimmed to round(seconds * 44100) samples.

Where the parts live: requests and clip lengths `model.request`, frame sizes `model.geometry`,
loading and saving `model.loading` (files and fingerprints: `model.stack`), the loops
`model.sampling`, stage offload `model.offload`.
"""
from __future__ import annotations

import collections
import contextlib
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .adapters import Adapter
from .errors import InvalidRequest
from .geometry import BASE_TIER, SR_STAGE, output_size
from .loading import WEIGHTS_SHARE_OF_GPU, Stack, build_tiny, load_stack, save_stack
from .offload import StageOffload
from .prompt import NEGATIVE_PROMPT
from .request import Clip, RenderRequest, latent_lengths, validate_request
from .sampling import check_stop, distill_loop, noise, super_resolve, unipc_loop
from .stages import (BASE, DECODE, SR, STORED_STAGES, StageResult, array_sha256, check_fits, render_stages,
                     stage_key_inputs)
from .stack import dit_fingerprint

# Encoded conditioning a pipeline keeps (prompt embeddings: a few MB each at full size, <= 640
# tokens x 3840 fp32; image latents and audio posteriors: less).
ENCODED_CACHE_SIZE = 64


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Temporarily set torch's intra-op thread count (None = leave it)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class HappyHorsePipeline:
    """The one entry point: `tiny(seed)` or `from_pretrained(folder)`, then `pipe(RenderRequest)`.

    offload: stages live on the CPU and move to the device when used; they stay there (least
    recently used first out) while the resident set fits offload_budget_bytes (default 70% of the
    GPU's memory), so back-to-back clips of one profile do not reload (`model.offload`).
    cpu_threads: intra-op threads while rendering on CPU (None = leave torch's setting). The tiny
    preset uses 1: its ops are too small to gain from threads, and on a busy machine OpenMP
    spin-waiting made renders 10-30x slower.
    adapter_capacity: brand adapters held on the DiTs at once (least recently used out); see
    `use_adapter`."""

    def __init__(self, stack: Stack, device: str | torch.device = "cpu", offload: bool = False,
                 cpu_threads: int | None = None, offload_budget_bytes: int | None = None, adapter_capacity: int = 4):
        self.dits = stack.dits
        self.text_encoder = stack.text_encoder
        self.video_codec = stack.video_codec
        self.audio_codec = stack.audio_codec
        self.config = stack.config
        self.fingerprint = stack.fingerprint
        self.weight_hashes = stack.weight_hashes
        self.stage_fingerprints = stack.stage_fingerprints     # per stack stage: what stage keys name
        # what an adapter is trained against: one fingerprint per DiT stage
        self.dit_fingerprints = {stage: dit_fingerprint(self.fingerprint, self.weight_hashes, stage) for stage in self.dits}
        self.adapter_capacity = adapter_capacity
        self._adapters = None                # model.lora.ResidentAdapters, made on first use (peft import)
        self.device = torch.device(device)
        self.cpu_threads = cpu_threads
        self.offload: StageOffload | None = None
        if offload:
            if offload_budget_bytes is None and self.device.type == "cuda":
                total = torch.cuda.get_device_properties(self.device).total_memory
                offload_budget_bytes = int(WEIGHTS_SHARE_OF_GPU * total)
            self.offload = StageOffload(self.device, offload_budget_bytes or 0)
        else:
            for m in (*self.dits.values(), self.text_encoder.model, self.video_codec.vae, self.audio_codec.vae):
                m.to(self.device)
        # Conditioning encoded once (least recently used out): prompt embeddings by (text encoder and
        # tokenizer fingerprints, prompt), reference image latents and audio posteriors by (VAE
        # fingerprint, content sha256, size). The variants of a shot (aspects, takes, destinations)
        # share its prompt and references.
        self._encoded: collections.OrderedDict[tuple, object] = collections.OrderedDict()

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def tiny(cls, seed: int = 0, device: str | torch.device = "cpu") -> "HappyHorsePipeline":
        """Random-weight preset with every architectural feature (spec §8 tiny-128), seeded.
        Its description without building it: `model.stack.describe_tiny(seed)`."""
        with torch_threads(1):              # tiny tensors: threads only add spin-wait on a busy CPU
            return cls(build_tiny(seed), device=device, cpu_threads=1)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                        offload: bool = False, allow_pickle: bool = False,
                        stages: tuple[str, ...] | None = None) -> "HappyHorsePipeline":
        """Load a checkpoint stack. DiT folders present among base/, distill/, 540p_sr/, 1080p_sr/
        are loaded (at least one of base/distill is required); each is checked for the exact key set
        and shapes before any tensor is read. `dtype` is the block-linear weight and matmul dtype
        (default bf16; float32 gives an all-fp32 flow). `offload` keeps idle stages on the CPU
        (turned on automatically when the stack would not leave room on the GPU); `stages` limits
        which DiTs are loaded (default: all present). Pickle files in any stage folder are refused
        unless `allow_pickle`. The fingerprint is a sha256 over the sha256 of every file loaded;
        `model.stack.describe_checkpoint` gives it (and the frame sizes) without loading."""
        device = torch.device(device)
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype or torch.bfloat16
        stack, offload = load_stack(folder, device, dtype, offload, allow_pickle, stages)
        small = all(d.cfg.hidden_size <= 1024 for d in stack.dits.values())
        return cls(stack, device=device, offload=offload, cpu_threads=1 if small else None)

    def save_pretrained(self, folder: str | Path, max_shard_bytes: int = 2 << 20) -> None:
        """Write the released folder layout (see `model.loading.save_stack`)."""
        save_stack(self, folder, max_shard_bytes)

    def size_for(self, resolution: str, aspect_ratio: str) -> tuple[int, int]:
        """(width, height) of a tier and aspect ratio; see `model.geometry.output_size`."""
        return output_size(self.config.tiers, resolution, aspect_ratio)

    # ------------------------------------------------------------------------------ adapters
    def use_adapter(self, adapter: Adapter | None, strength: float = 1.0) -> None:
        """Make `adapter` at `strength` (None: the base model) what the DiTs compute, without
        reloading or writing any base weight: an adapter is loaded onto its stage's DiT the first
        time (checked against that DiT's fingerprint and shapes) and held there, so switching back
        is a flag flip. Every render calls this with its own adapter, so nothing carries over."""
        if adapter is None and self._adapters is None:
            return
        if self._adapters is None:
            from .lora import ResidentAdapters
            self._adapters = ResidentAdapters(self.dits, self.dit_fingerprints, self.adapter_capacity)
        self._adapters.activate(adapter, strength)

    @property
    def resident_adapters(self) -> tuple[str, ...]:
        """sha256 of the adapters held on the DiTs (least recently used first): a pool can send a
        job to the replica that already holds its adapter."""
        return self._adapters.held if self._adapters is not None else ()

    # ------------------------------------------------------------------------------ render
    def __call__(self, request: RenderRequest, should_stop: Callable[[], bool] | None = None,
                 start: StageResult | None = None, adapter: Adapter | None = None,
                 adapter_strength: float = 1.0) -> Clip:
        """Render one clip, from noise or from `start`, a stage result of this request and model
        (`model.stages`), with a brand adapter at `adapter_strength` on the request's DiT (None: the
        base model; the SR stage always runs the base SR model). should_stop is polled between
        steps; True raises RenderCancelled."""
        return self._run(request, start, DECODE, should_stop, adapter, adapter_strength)

    def render_until(self, request: RenderRequest, stop_after: str, start: StageResult | None = None,
                     should_stop: Callable[[], bool] | None = None, adapter: Adapter | None = None,
                     adapter_strength: float = 1.0) -> StageResult:
        """Run the request's stages up to and including `stop_after` ("base", or "sr" for a
        540p/1080p request), from noise or from `start`, and return that stage's result. Finish
        with `pipe(request, start=result)`; a 256p result finishes any resolution."""
        if stop_after not in STORED_STAGES:
            raise InvalidRequest(f"stop_after must be one of {STORED_STAGES} (the decoded clip is pipe(request)), "
                                 f"got {stop_after!r}")
        return self._run(request, start, stop_after, should_stop, adapter, adapter_strength)

    def _run(self, r: RenderRequest, start: StageResult | None, stop_after: str, should_stop,
             adapter: Adapter | None, adapter_strength: float):
        validate_request(r, self.config.tiers, self.dits)
        _check_adapter(r, adapter, adapter_strength)
        # what the stage keys name of the adapter: none, or its sha256 and strength
        keyed = {"adapter_sha256": adapter.sha256, "adapter_strength": float(adapter_strength)} if adapter else {}
        stages = render_stages(r)
        if stop_after not in stages:
            raise InvalidRequest(f"a {r.resolution} render has no {stop_after!r} stage (it has {stages})")
        todo = stages[: stages.index(stop_after) + 1]
        if start is not None:
            check_fits(start, r, self.stage_fingerprints, self.device.type, **keyed)
            todo = todo[stages.index(start.stage) + 1:]
            if not todo:
                raise InvalidRequest(f"a {start.stage} stage result is already past {stop_after!r}")
        timings = {"text_encode": 0.0, "denoise": 0.0, "sr": 0.0, "decode": 0.0}
        result = start
        threads = self.cpu_threads if self.device.type == "cpu" else None
        with torch_threads(threads), torch.no_grad():
            self.use_adapter(adapter, float(adapter_strength))
            for stage in todo:
                if stage == BASE:
                    result = self._base(r, timings, should_stop, keyed)
                elif stage == SR:
                    result = self._super_resolve(r, result, timings, should_stop, keyed)
                else:
                    result = self._decode(r, result, timings, should_stop)
        result.timings, result.stages_run = timings, todo
        return result

    def _base(self, r: RenderRequest, timings: dict, should_stop, keyed: dict) -> StageResult:
        """Text encoding, [image/audio encode], noise and the distill or base loop at 256p."""
        cfg, dev = self.config, self.device
        gen = torch.Generator(device=dev).manual_seed(int(r.seed))
        width, height = self.size_for(BASE_TIER, r.aspect_ratio)
        h, w = height // cfg.vae_stride[1], width // cfg.vae_stride[2]
        dit = self.dits[r.profile]

        t0 = time.perf_counter()
        with self._on_device(self.text_encoder.model):
            text = self._encode_text(r.prompt)
            neg = self._encode_text(NEGATIVE_PROMPT if r.negative_prompt is None else r.negative_prompt) \
                if r.profile == "base" else None
        image_latent = given_audio = None
        if r.image is not None or r.audio is not None:
            with self._on_device(self.video_codec.vae, self.audio_codec.vae):
                if r.image is not None:
                    image_latent = self._encode_image(r.image, width, height)
                if r.audio is not None:
                    given_audio = self.audio_codec.sample(*self._audio_posterior(r), gen).to(dev)
        _sync(dev)
        timings["text_encode"] = time.perf_counter() - t0

        Ta, T = latent_lengths(r.seconds, cfg.fps)
        if given_audio is not None:
            Ta = given_audio.shape[1]
            T = (Ta - 1) // 4 + 1
        audio = noise((1, Ta, dit.cfg.audio_in_channels), gen)       # draw order: audio, then video
        video = noise((1, cfg.z_dim, T, h, w), gen)
        if given_audio is not None:
            audio = given_audio

        t0 = time.perf_counter()
        with self._on_device(dit):
            if r.profile == "distill":
                video, audio = distill_loop(dit, video, audio, text, gen, cfg, image_latent,
                                            given_audio is not None and r.keep_audio_fixed, should_stop)
            else:
                video, audio = unipc_loop(dit, video, audio, text, neg, cfg.base_steps, cfg, image_latent,
                                          given_audio is not None, should_stop)
        _sync(dev)
        timings["denoise"] = time.perf_counter() - t0
        # `audio` is what sr and decode use: with TA2V the loops return the given audio untouched,
        # unless the distill loop re-noised it (keep_audio_fixed=False, the upstream behaviour)
        return StageResult(BASE, stage_key_inputs(r, BASE, self.stage_fingerprints, **keyed), video, audio, text,
                           gen.get_state(), dev.type)

    def _super_resolve(self, r: RenderRequest, base: StageResult, timings: dict, should_stop,
                       keyed: dict) -> StageResult:
        """The SR loop to the request's tier, drawing its noise from the generator state after base."""
        cfg, dev = self.config, self.device
        t0 = time.perf_counter()
        gen = torch.Generator(device=dev)
        gen.set_state(base.generator_state)
        sr_dit = self.dits[SR_STAGE[r.resolution]]
        width, height = self.size_for(r.resolution, r.aspect_ratio)
        image_latent = None
        if r.image is not None:
            with self._on_device(self.video_codec.vae):
                image_latent = self._encode_image(r.image, width, height)
        with self._on_device(sr_dit):
            video = super_resolve(sr_dit, base.video.to(dev), base.audio.to(dev), base.text.to(dev),
                                  (height // cfg.vae_stride[1], width // cfg.vae_stride[2]), gen, cfg, image_latent,
                                  r.audio is not None, should_stop)
        _sync(dev)
        timings["sr"] = time.perf_counter() - t0
        return StageResult(SR, stage_key_inputs(r, SR, self.stage_fingerprints, **keyed), video, base.audio,
                           device_type=dev.type)

    def _decode(self, r: RenderRequest, latent: StageResult, timings: dict, should_stop) -> Clip:
        cfg, dev = self.config, self.device
        t0 = time.perf_counter()
        check_stop(should_stop)
        with self._on_device(self.video_codec.vae, self.audio_codec.vae):
            pixels = self.video_codec.decode(latent.video.to(dev))[0]              # (3, F, H, W)
            wave = self.audio_codec.decode(latent.audio.to(dev))
        frames = ((pixels.permute(1, 2, 3, 0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        n_samples = min(wave.shape[1], int(round(r.seconds * cfg.sample_rate)))
        timings["decode"] = time.perf_counter() - t0
        return Clip(frames=frames, audio=np.ascontiguousarray(wave[:, :n_samples].numpy(), dtype=np.float32),
                    fps=cfg.fps, sample_rate=cfg.sample_rate)

    # ------------------------------------------------------------------------------ helpers
    def _on_device(self, *modules):
        """With offload, bring `modules` to the device for the block; without, they are there."""
        return self.offload.use(*modules) if self.offload else contextlib.nullcontext()

    def _once(self, key: tuple, compute: Callable[[], object]):
        """`compute()`, or what it returned for `key` before (see `ENCODED_CACHE_SIZE`). What it
        returns is shared by every render with that input: callers must not change it in place."""
        value = self._encoded.pop(key, None)
        if value is None:
            value = compute()
        self._encoded[key] = value
        while len(self._encoded) > ENCODED_CACHE_SIZE:
            self._encoded.popitem(last=False)
        return value

    def _encode_text(self, prompt: str) -> torch.Tensor:
        fp = self.stage_fingerprints
        key = ("text", fp.get("text_encoder"), fp.get("tokenizer"), self.text_encoder.max_tokens, prompt)
        return self._once(key, lambda: self.text_encoder.encode(prompt).to(self.device))

    def _audio_posterior(self, r: RenderRequest) -> tuple[torch.Tensor, torch.Tensor]:
        """The given audio's posterior (mean, std), for the request's length."""
        wave = r.audio[:, : int(round(r.seconds * r.audio_sample_rate))]
        key = ("audio", self.stage_fingerprints.get("audio_vae"), array_sha256(wave), r.audio_sample_rate)
        return self._once(key, lambda: self.audio_codec.posterior(torch.from_numpy(wave).to(self.device),
                                                                  r.audio_sample_rate))

    def _encode_image(self, image: np.ndarray, width: int, height: int) -> torch.Tensor:
        key = ("image", self.stage_fingerprints.get("video_vae"), array_sha256(image), width, height)
        return self._once(key, lambda: self._image_latent(image, width, height))

    def _image_latent(self, image: np.ndarray, width: int, height: int) -> torch.Tensor:
        """Centre-crop to the target aspect, resize, map to [-1, 1], encode as a 1-frame video."""
        h, w = image.shape[:2]
        if w * height > h * width:
            cw, ch = int(round(h * width / height)), h
        else:
            cw, ch = w, int(round(w * height / width))
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        x = torch.from_numpy(np.ascontiguousarray(image[y0:y0 + ch, x0:x0 + cw])).permute(2, 0, 1)[None].float()
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        x = (x / 127.5 - 1.0).clamp(-1, 1)[:, :, None]
        return self.video_codec.encode(x.to(self.device)).to(self.device)


def _check_adapter(request: RenderRequest, adapter: Adapter | None, strength: float) -> None:
    if adapter is None:
        return
    if not isinstance(adapter, Adapter):
        raise InvalidRequest(f"adapter must be a model.adapters.Adapter or None, got {type(adapter).__name__}")
    if adapter.config.stage != request.profile:
        raise InvalidRequest(f"adapter {adapter.sha256[:12]} was trained on the {adapter.config.stage} model; "
                             f"the request uses {request.profile}")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
        raise InvalidRequest(f"adapter_strength must be a finite number, got {strength!r}")
