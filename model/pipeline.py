"""HappyHorsePipeline: text -> (video, audio) clip with the daVinci-MagiHuman stack (spec §4).

Stages: text encode (T5Gemma) -> noise -> [TI2V image / TA2V audio encode] -> distilled (8 steps,
re-noising) or base (32 UniPC steps, CFG vs the negative prompt) loop at 256p -> optional SR loop
(540p, or 1080p with local attention; 5 UniPC steps) -> Wan2.2 VAE decode + Oobleck decode.

Lengths (spec §3.3, §3.5): for `seconds` s, n = round(25 s) audio-latent intervals,
Ta = n + 1 audio latents, T = n // 4 + 1 video latent frames and F = 4 (T - 1) + 1 decoded frames
at 25 fps (1 s -> 25 frames, 4 s -> 101, 5 s -> 125). Decoded audio (Ta * 1764 samples at 44.1 kHz)
is trimmed to round(seconds * 44100) samples. With TA2V the given audio (cut to `seconds`) sets
Ta and T = (Ta - 1) // 4 + 1.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from .codecs import (AudioCodec, TextEncoder, VideoCodec, load_text_encoder, tiny_audio_vae, tiny_text_encoder,
                     tiny_video_vae)
from .config import TINY_AUDIO_LATENT, DiTConfig, PipelineConfig, full_dit_config, tiny_dit_config, tiny_pipeline_config
from .dit import DiT, ExpertLinear, build_dit, init_random_
from .packing import build_coords, patchify, unpatchify
from .prompt import NEGATIVE_PROMPT
from .schedulers import distill_step, flow_sigmas, flow_timesteps, make_unipc, sr_noise_coefficients, video_guidance

DIT_STAGES = ("base", "distill", "540p_sr", "1080p_sr")
SR_STAGE = {"540p": "540p_sr", "1080p": "1080p_sr"}
RESOLUTIONS = ("256p", "540p", "1080p")
ASPECT_RATIOS = {"16:9": (16, 9), "9:16": (9, 16), "1:1": (1, 1), "4:5": (4, 5)}
PROFILES = ("distill", "base")
MAX_SECONDS = 30.0
FORMAT_VERSION = 1


class InvalidRequest(ValueError):
    """The request cannot be rendered as given; retrying will not help."""


class RenderCancelled(RuntimeError):
    """should_stop() returned True between two steps."""


@dataclass(frozen=True)
class RenderRequest:
    prompt: str
    seconds: float
    seed: int
    negative_prompt: str | None = None          # None = the built-in NEGATIVE_PROMPT
    resolution: str = "256p"                     # "540p"/"1080p" add the SR stage
    aspect_ratio: str = "16:9"
    profile: str = "distill"                     # "distill" (8 steps) | "base" (32 steps + CFG)
    image: np.ndarray | None = field(default=None, compare=False)   # TI2V: (H, W, 3) uint8
    audio: np.ndarray | None = field(default=None, compare=False)   # TA2V: (channels, samples) float32
    audio_sample_rate: int | None = None
    keep_audio_fixed: bool = False               # TA2V distill: keep the given audio clean (upstream re-noises it)


@dataclass
class Clip:
    frames: np.ndarray                           # uint8 (T, H, W, 3)
    audio: np.ndarray                            # float32 (channels, samples)
    fps: int = 25
    sample_rate: int = 44100
    timings: dict[str, float] = field(default_factory=dict)   # text_encode, denoise, sr, decode (s)


def latent_lengths(seconds: float, fps: int = 25) -> tuple[int, int]:
    """(Ta audio latents, T video latent frames) for a generated clip of `seconds`."""
    n = int(round(seconds * fps))
    return n + 1, n // 4 + 1


def frame_count(seconds: float, fps: int = 25) -> int:
    """Decoded video frames: 4 (T - 1) + 1 with T = round(25 s) // 4 + 1."""
    _, T = latent_lengths(seconds, fps)
    return 4 * (T - 1) + 1


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


def _pipeline_config(folder: Path) -> PipelineConfig:
    pipe_json = folder / "pipeline.json"
    if not pipe_json.exists():
        return PipelineConfig()
    d = json.loads(pipe_json.read_text())
    d.pop("format", None)
    return PipelineConfig.from_dict(d)


def output_size(config: PipelineConfig, resolution: str, aspect_ratio: str) -> tuple[int, int]:
    """(width, height) in pixels: the short side is the tier (256/512/1088 px; the tiny preset
    64/96/128) and the long side is short * ratio rounded to a multiple of 32 px (the latent
    grid must be even after the 16x VAE stride): 16:9 256p -> 448x256, 540p -> 896x512,
    1080p -> 1920x1088."""
    if resolution not in config.tiers:
        raise InvalidRequest(f"resolution must be one of {list(config.tiers)}, got {resolution!r}")
    if aspect_ratio not in ASPECT_RATIOS:
        raise InvalidRequest(f"aspect_ratio must be one of {list(ASPECT_RATIOS)}, got {aspect_ratio!r}")
    short = config.tiers[resolution]
    a, b = ASPECT_RATIOS[aspect_ratio]
    long = max(32, int(round(short * max(a, b) / min(a, b) / 32)) * 32)
    return (long, short) if a >= b else (short, long)


def stack_files(folder: Path, stages: tuple[str, ...], allow_pickle: bool = False) -> list[Path]:
    """Every file of a checkpoint stack that shapes its output: the DiT stages' weights, configs
    and indexes, the codec and text-encoder folders, pipeline.json. The fingerprint hashes these."""
    files: list[Path] = []
    for stage in stages:
        sub = folder / stage
        files += ckpt.weight_files(sub, allow_pickle).values()
        files += [p for p in (sub / "config.json", sub / ckpt.INDEX_NAME) if p.exists()]
    for sub in ("text_encoder", "tokenizer", "video_vae", "audio_vae"):
        if (folder / sub).is_dir():
            files += [p for p in (folder / sub).rglob("*") if p.is_file()]
    if (folder / "pipeline.json").exists():
        files.append(folder / "pipeline.json")
    return sorted(set(files))


class HappyHorsePipeline:
    def __init__(self, dits: dict[str, DiT], text_encoder: TextEncoder, video_codec: VideoCodec,
                 audio_codec: AudioCodec, config: PipelineConfig, fingerprint: str,
                 device: str | torch.device = "cpu", offload: bool = False, weight_hashes: dict | None = None,
                 preset: str = "checkpoint", cpu_threads: int | None = None,
                 offload_budget_bytes: int | None = None):
        self.dits = dits
        self.text_encoder = text_encoder
        self.video_codec = video_codec
        self.audio_codec = audio_codec
        self.config = config
        self.fingerprint = fingerprint
        self.weight_hashes = weight_hashes or {}
        self.device = torch.device(device)
        # offload: stages live on the CPU and move to the device when used; they stay there
        # (least recently used first out) while the resident set fits offload_budget_bytes
        # (default 70% of the GPU's memory), so back-to-back clips of one profile do not reload.
        self.offload = offload
        if offload_budget_bytes is None and self.device.type == "cuda":
            offload_budget_bytes = int(0.7 * torch.cuda.get_device_properties(self.device).total_memory)
        self.offload_budget_bytes = offload_budget_bytes or 0
        self._resident: list[torch.nn.Module] = []          # on the device, least recently used first
        self.preset = preset
        # intra-op threads while rendering on CPU (None = leave torch's setting). The tiny preset
        # uses 1: its ops are too small to gain from threads, and on a busy machine OpenMP
        # spin-waiting made renders 10-30x slower.
        self.cpu_threads = cpu_threads
        self._negative_cache: dict[str, torch.Tensor] = {}
        if not offload:
            for m in self._modules():
                m.to(self.device)

    def _modules(self):
        return [*self.dits.values(), self.text_encoder.model, self.video_codec.vae, self.audio_codec.vae]

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def tiny(cls, seed: int = 0, device: str | torch.device = "cpu") -> "HappyHorsePipeline":
        """Random-weight preset with every architectural feature (spec §8 tiny-128), seeded."""
        with torch_threads(1):              # tiny tensors: threads only add spin-wait on a busy CPU
            return cls._build_tiny(seed, device)

    @classmethod
    def _build_tiny(cls, seed: int, device) -> "HappyHorsePipeline":
        cfg = tiny_pipeline_config()
        dits = {}
        for k, stage in enumerate(DIT_STAGES):
            dits[stage] = init_random_(build_dit(tiny_dit_config(stage, TINY_AUDIO_LATENT)), seed * 1000 + k).eval()
        text_in = dits["distill"].cfg.text_in_channels
        te_model, tok = tiny_text_encoder(text_in, seed * 1000 + 11)
        desc = {"preset": "tiny", "seed": seed, "format": FORMAT_VERSION, "pipeline": cfg.to_dict(),
                "dits": {s: d.cfg.to_dict() for s, d in dits.items()}}
        fp = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()
        return cls(dits, TextEncoder(te_model, tok, cfg.text_max_tokens),
                   VideoCodec(tiny_video_vae(cfg.z_dim, seed * 1000 + 12)),
                   AudioCodec(tiny_audio_vae(dits["distill"].cfg.audio_in_channels, seed * 1000 + 13),
                              cfg.audio_model_rate, cfg.sample_rate),
                   cfg, fp, device=device, preset="tiny", cpu_threads=1)

    def save_pretrained(self, folder: str | Path, max_shard_bytes: int = 2 << 20) -> None:
        """Write the released folder layout: <stage>/ sharded safetensors for each DiT (plus our
        config.json), text_encoder/, tokenizer/, audio_vae/, video_vae/, pipeline.json."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for stage, dit in self.dits.items():
            ckpt.save_sharded(dit.state_dict(), folder / stage, max_shard_bytes)
            (folder / stage / "config.json").write_text(dit.cfg.to_json())
        self.text_encoder.model.save_pretrained(folder / "text_encoder")
        self.text_encoder.tokenizer.save_pretrained(folder / "tokenizer")
        self.audio_codec.vae.save_pretrained(folder / "audio_vae")
        self.video_codec.vae.save_pretrained(folder / "video_vae")
        (folder / "pipeline.json").write_text(json.dumps({"format": FORMAT_VERSION, **self.config.to_dict()}, indent=2))

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                        offload: bool = False, allow_pickle: bool = False,
                        stages: tuple[str, ...] | None = None) -> "HappyHorsePipeline":
        """Load a checkpoint stack. DiT folders present among base/, distill/, 540p_sr/, 1080p_sr/
        are loaded (at least one of base/distill is required); each is checked for the exact key set
        and shapes before any tensor is read. `dtype` is the block-linear weight and matmul dtype
        (default bf16; float32 gives an all-fp32 flow). `offload` keeps idle stages on the CPU
        (turned on automatically when the stack would not leave room on the GPU); `stages` limits
        which DiTs are loaded (default: all present).
        The fingerprint is a sha256 over the sha256 of every file in the layout."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ckpt.CheckpointError(f"checkpoint folder {folder} does not exist")
        device = torch.device(device)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        dtype = dtype or torch.bfloat16
        config = _pipeline_config(folder)
        unknown = set(stages or ()) - set(DIT_STAGES)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {DIT_STAGES}")
        metas: dict[str, tuple[DiT, Path]] = {}
        for stage in stages or DIT_STAGES:
            sub = folder / stage
            if not sub.is_dir():
                continue
            cfg_path = sub / "config.json"
            cfg = DiTConfig.from_dict(json.loads(cfg_path.read_text())) if cfg_path.exists() else full_dit_config(stage)
            with torch.device("meta"):
                dit = DiT(cfg)
            for mod in dit.modules():       # block linears in the requested dtype, the rest fp32
                if isinstance(mod, ExpertLinear):
                    mod.weight.data = mod.weight.data.to(dtype)
            expected = {k: tuple(v.shape) for k, v in (*dit.named_parameters(), *dit.named_buffers())}
            ckpt.validate(sub, expected, allow_pickle)           # before any tensor is read
            metas[stage] = (dit, sub)
        if not ({"base", "distill"} & set(metas)):
            raise ckpt.CheckpointError(f"{folder}: needs a base/ or distill/ DiT folder (found {sorted(metas) or 'none'})")
        for sub in ("text_encoder", "video_vae", "audio_vae"):
            if not (folder / sub).is_dir():
                raise ckpt.CheckpointError(f"{folder}: missing {sub}/ folder")
        if device.type == "cuda" and not offload:
            need = sum(cls._nbytes(d) for d, _ in metas.values())
            need += sum(p.stat().st_size for p in (folder / "text_encoder").rglob("*.safetensors"))
            if need > 0.7 * torch.cuda.get_device_properties(device).total_memory:
                warnings.warn(f"the checkpoint stack (~{need / 2**30:.0f} GiB) leaves no room for activations on "
                              f"{device}; offloading idle stages to the CPU (pass stages=... to load fewer)")
                offload = True
        place = torch.device("cpu") if offload else device
        dits: dict[str, DiT] = {}
        for stage, (dit, sub) in metas.items():
            dit = dit.to_empty(device=place)
            dit.compute_dtype = dtype
            ckpt.load_into(dit, sub, allow_pickle)
            dits[stage] = dit.eval()
        te_dtype = dtype if device.type == "cuda" else torch.float32
        tok_dir = folder / "tokenizer" if (folder / "tokenizer").is_dir() else folder / "text_encoder"
        te_model, tok = load_text_encoder(folder / "text_encoder", tok_dir, te_dtype, place)
        from diffusers import AutoencoderKLWan, AutoencoderOobleck
        video_vae = AutoencoderKLWan.from_pretrained(folder / "video_vae", local_files_only=True).eval()
        with warnings.catch_warnings():    # diffusers' Oobleck still uses the deprecated weight_norm
            warnings.simplefilter("ignore", FutureWarning)
            audio_vae = AutoencoderOobleck.from_pretrained(folder / "audio_vae", local_files_only=True).eval()
        # turbo_vae/ (Turbo-VAED, a pickle) is not ported and never read: the Wan2.2 decoder renders
        # instead (the spec's §3.2 fallback), so allow_pickle only concerns DiT folders.
        fp, hashes = ckpt.fingerprint_files(folder, stack_files(folder, tuple(metas), allow_pickle))
        return cls(dits, TextEncoder(te_model, tok, config.text_max_tokens), VideoCodec(video_vae),
                   AudioCodec(audio_vae, config.audio_model_rate, config.sample_rate), config, fp,
                   device=device, offload=offload, weight_hashes=hashes,
                   cpu_threads=1 if all(d.cfg.hidden_size <= 1024 for d in dits.values()) else None)

    # ------------------------------------------------------------------------------ geometry
    @classmethod
    def describe(cls, folder: str | Path, stages: tuple[str, ...] | None = None, allow_pickle: bool = False) -> dict:
        """What a planner needs without loading any tensor: the fingerprint `from_pretrained` would
        report for the same folder and stages, and the output size of each tier and aspect ratio."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ckpt.CheckpointError(f"checkpoint folder {folder} does not exist")
        present = tuple(st for st in (stages or DIT_STAGES) if (folder / st).is_dir())
        fp, _ = ckpt.fingerprint_files(folder, stack_files(folder, present, allow_pickle))
        config = _pipeline_config(folder)
        return {"fingerprint": fp, "stages": present, "size_for": lambda res, ar: output_size(config, res, ar)}

    def size_for(self, resolution: str, aspect_ratio: str) -> tuple[int, int]:
        """(width, height) of a tier and aspect ratio; see `output_size`."""
        return output_size(self.config, resolution, aspect_ratio)

    # ------------------------------------------------------------------------------ validation
    def _validate(self, r: RenderRequest) -> None:
        if not isinstance(r, RenderRequest):
            raise InvalidRequest(f"expected a RenderRequest, got {type(r).__name__}")
        if not isinstance(r.prompt, str) or not r.prompt.strip():
            raise InvalidRequest("prompt must be a non-empty string")
        if r.negative_prompt is not None and not isinstance(r.negative_prompt, str):
            raise InvalidRequest("negative_prompt must be a string or None")
        self.size_for(r.resolution, r.aspect_ratio)
        if r.profile not in PROFILES:
            raise InvalidRequest(f"profile must be one of {PROFILES}, got {r.profile!r}")
        if r.profile not in self.dits:
            raise InvalidRequest(f"this checkpoint has no {r.profile}/ model (has {sorted(self.dits)})")
        if r.resolution in SR_STAGE and SR_STAGE[r.resolution] not in self.dits:
            raise InvalidRequest(f"this checkpoint has no {SR_STAGE[r.resolution]}/ model for {r.resolution}")
        if not isinstance(r.seconds, (int, float)) or not math.isfinite(r.seconds) or not 0.2 <= r.seconds <= MAX_SECONDS:
            raise InvalidRequest(f"seconds must be between 0.2 and {MAX_SECONDS}, got {r.seconds!r}")
        if isinstance(r.seed, bool) or not isinstance(r.seed, (int, np.integer)) or not 0 <= r.seed < 2 ** 63:
            raise InvalidRequest(f"seed must be an integer in [0, 2**63), got {r.seed!r}")
        if r.image is not None:
            img = r.image
            if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise InvalidRequest("image must be a uint8 numpy array of shape (H, W, 3)")
            if min(img.shape[:2]) < 8:
                raise InvalidRequest(f"image is too small: {img.shape[1]}x{img.shape[0]}")
        if r.audio is not None:
            a = r.audio
            if not isinstance(a, np.ndarray) or a.ndim != 2 or a.dtype != np.float32:
                raise InvalidRequest("audio must be a float32 numpy array of shape (channels, samples)")
            if not isinstance(r.audio_sample_rate, int) or not 8000 <= r.audio_sample_rate <= 192000:
                raise InvalidRequest("audio_sample_rate (8000..192000 Hz) is required with audio")
            if a.shape[1] < r.audio_sample_rate * 0.2:
                raise InvalidRequest("audio must be at least 0.2 s long")
            if not np.isfinite(a).all():
                raise InvalidRequest("audio contains NaN or inf")
        elif r.keep_audio_fixed:
            raise InvalidRequest("keep_audio_fixed needs an audio input")

    # ------------------------------------------------------------------------------ helpers
    def _threads(self):
        return torch_threads(self.cpu_threads if self.device.type == "cpu" else None)

    @staticmethod
    def _nbytes(module: torch.nn.Module) -> int:
        return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))

    @contextlib.contextmanager
    def _on_device(self, *modules):
        """With offload, bring `modules` to the device, evicting least recently used idle ones
        to the CPU until the resident set fits the budget."""
        if self.offload:
            for m in modules:
                if m in self._resident:
                    self._resident.remove(m)
                    self._resident.append(m)
                    continue
                need = self._nbytes(m)
                evicted = False
                while self._resident and sum(map(self._nbytes, self._resident)) + need > self.offload_budget_bytes:
                    idle = next((r for r in self._resident if all(r is not x for x in modules)), None)
                    if idle is None:
                        break
                    idle.to("cpu")
                    self._resident.remove(idle)
                    evicted = True
                if evicted and self.device.type == "cuda":
                    torch.cuda.empty_cache()
                m.to(self.device)
                self._resident.append(m)
        yield

    def _encode_text(self, prompt: str) -> torch.Tensor:
        return self.text_encoder.encode(prompt).to(self.device)

    def _negative(self, prompt: str) -> torch.Tensor:
        if prompt not in self._negative_cache:
            self._negative_cache = {prompt: self._encode_text(prompt)}   # keep only the latest
        return self._negative_cache[prompt]

    def _encode_image(self, image: np.ndarray, width: int, height: int) -> torch.Tensor:
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

    def _velocity(self, dit: DiT, video, audio, text, frame_tokens=None):
        _, _, T, h, w = video.shape
        grid = (T, h // 2, w // 2)
        coords = build_coords(grid, audio.shape[1], text.shape[0], dit.cfg.coords_style).to(video.device)
        v, a = dit(patchify(video), audio[0], text, coords, frame_tokens=grid[1] * grid[2])
        return unpatchify(v, grid), a[None]

    @staticmethod
    def _poll(should_stop):
        if should_stop is not None and should_stop():
            raise RenderCancelled("render cancelled between steps")

    def _noise(self, shape, gen):
        return torch.randn(shape, generator=gen, device=gen.device, dtype=torch.float32).to(self.device)

    # ------------------------------------------------------------------------------ samplers
    def _distill_loop(self, dit, video, audio, text, gen, image_latent, audio_fixed, should_stop):
        sigmas = flow_sigmas(self.config.distill_steps, self.config.shift)
        for i in range(self.config.distill_steps):
            self._poll(should_stop)
            if image_latent is not None:
                video[:, :, :1] = image_latent
            v_vid, v_aud = self._velocity(dit, video, audio, text)
            s, s_next = float(sigmas[i]), float(sigmas[i + 1])
            nv = self._noise(video.shape, gen) if s_next > 0 else None
            na = self._noise(audio.shape, gen) if s_next > 0 else None
            video = distill_step(video, v_vid, s, s_next, nv)
            if not audio_fixed:
                audio = distill_step(audio, v_aud, s, s_next, na)
        if image_latent is not None:
            video[:, :, :1] = image_latent
        return video, audio

    def _unipc_loop(self, dit, video, audio, text, neg_text, steps, gen, image_latent, audio_fixed, should_stop,
                    video_scale=None, frame_tokens=None):
        """UniPC over video and audio (two scheduler instances). With neg_text, CFG: video scale 5
        while t > 500 then 2, audio scale 5. Given (TA2V) audio is never updated."""
        cfg = self.config
        sv, sa = make_unipc(steps, cfg.shift, self.device), make_unipc(steps, cfg.shift, self.device)
        ts = flow_timesteps(steps, cfg.shift)
        for i in range(steps):
            self._poll(should_stop)
            if image_latent is not None:
                video[:, :, :1] = image_latent
            v_vid, v_aud = self._velocity(dit, video, audio, text)
            if neg_text is not None:
                u_vid, u_aud = self._velocity(dit, video, audio, neg_text)
                s = video_guidance(ts[i], cfg.video_cfg_high, cfg.video_cfg_low, cfg.video_cfg_switch_t)
                v_vid = u_vid + s * (v_vid - u_vid)
                v_aud = u_aud + cfg.audio_cfg * (v_aud - u_aud)
            video = sv.step(v_vid, sv.timesteps[i], video).prev_sample
            if not audio_fixed:
                audio = sa.step(v_aud, sa.timesteps[i], audio).prev_sample
        if image_latent is not None:
            video[:, :, :1] = image_latent
        return video, audio

    # ------------------------------------------------------------------------------ render
    def __call__(self, request: RenderRequest, should_stop: Callable[[], bool] | None = None) -> Clip:
        """Render one clip. should_stop is polled between steps; True raises RenderCancelled."""
        self._validate(request)
        with self._threads(), torch.no_grad():
            return self._render(request, should_stop)

    def _render(self, request: RenderRequest, should_stop) -> Clip:
        r, cfg, dev = request, self.config, self.device
        timings = {"text_encode": 0.0, "denoise": 0.0, "sr": 0.0, "decode": 0.0}
        gen = torch.Generator(device=dev).manual_seed(int(r.seed))
        width, height = self.size_for("256p", r.aspect_ratio)
        h, w = height // cfg.vae_stride[1], width // cfg.vae_stride[2]
        dit = self.dits[r.profile]

        t0 = time.perf_counter()
        with self._on_device(self.text_encoder.model):
            text = self._encode_text(r.prompt)
            neg = self._negative(NEGATIVE_PROMPT if r.negative_prompt is None else r.negative_prompt) if r.profile == "base" else None
        image_latent = given_audio = None
        if r.image is not None or r.audio is not None:
            with self._on_device(self.video_codec.vae, self.audio_codec.vae):
                if r.image is not None:
                    image_latent = self._encode_image(r.image, width, height)
                if r.audio is not None:
                    wave = torch.from_numpy(r.audio[:, : int(round(r.seconds * r.audio_sample_rate))])
                    given_audio = self.audio_codec.encode(wave.to(dev), r.audio_sample_rate, gen).to(dev)
        _sync(dev)
        timings["text_encode"] = time.perf_counter() - t0

        Ta, T = latent_lengths(r.seconds, cfg.fps)
        if given_audio is not None:
            Ta = given_audio.shape[1]
            T = (Ta - 1) // 4 + 1
        audio = self._noise((1, Ta, dit.cfg.audio_in_channels), gen)       # draw order: audio, then video
        video = self._noise((1, cfg.z_dim, T, h, w), gen)
        if given_audio is not None:
            audio = given_audio

        t0 = time.perf_counter()
        with self._on_device(dit):
            if r.profile == "distill":
                video, audio = self._distill_loop(dit, video, audio, text, gen, image_latent,
                                                  given_audio is not None and r.keep_audio_fixed, should_stop)
            else:
                video, audio = self._unipc_loop(dit, video, audio, text, neg, cfg.base_steps, gen, image_latent,
                                                given_audio is not None, should_stop)
        _sync(dev)
        timings["denoise"] = time.perf_counter() - t0
        final_audio = given_audio if (given_audio is not None and (r.keep_audio_fixed or r.profile == "base")) else audio

        if r.resolution in SR_STAGE:
            t0 = time.perf_counter()
            video = self._super_resolve(video, final_audio, text, r, gen, given_audio is not None, should_stop)
            _sync(dev)
            timings["sr"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        self._poll(should_stop)
        with self._on_device(self.video_codec.vae, self.audio_codec.vae):
            pixels = self.video_codec.decode(video)[0]                          # (3, F, H, W)
            wave = self.audio_codec.decode(final_audio)
        frames = ((pixels.permute(1, 2, 3, 0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        n_samples = min(wave.shape[1], int(round(r.seconds * cfg.sample_rate)))
        timings["decode"] = time.perf_counter() - t0
        return Clip(frames=frames, audio=np.ascontiguousarray(wave[:, :n_samples].numpy(), dtype=np.float32),
                    fps=cfg.fps, sample_rate=cfg.sample_rate, timings=timings)

    def _super_resolve(self, video, audio, text, r, gen, audio_given, should_stop):
        """Trilinear latent upsample, VP partial noising z = a z + sqrt(1-a^2) eps (a = 0.8389),
        audio tokens 0.7 eps + 0.3 base audio (clean given audio in TA2V), 5 UniPC steps, no CFG."""
        cfg = self.config
        dit = self.dits[SR_STAGE[r.resolution]]
        width, height = self.size_for(r.resolution, r.aspect_ratio)
        hs, ws = height // cfg.vae_stride[1], width // cfg.vae_stride[2]
        T = video.shape[2]
        z = F.interpolate(video, size=(T, hs, ws), mode="trilinear", align_corners=True)
        a, b = sr_noise_coefficients(cfg.sr_noise_index)
        z = a * z + b * self._noise(z.shape, gen)
        eps_a = self._noise(audio.shape, gen)
        sr_audio = audio if audio_given else cfg.sr_audio_noise * eps_a + (1.0 - cfg.sr_audio_noise) * audio
        image_latent = None
        if r.image is not None:
            with self._on_device(self.video_codec.vae):
                image_latent = self._encode_image(r.image, width, height)
        with self._on_device(dit):
            z, _ = self._unipc_loop(dit, z, sr_audio, text, None, cfg.sr_steps, gen, image_latent, audio_given,
                                    should_stop)
        return z
