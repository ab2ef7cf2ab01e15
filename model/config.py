"""DiT configuration and the two presets (full size from the spec, tiny for CPU tests).

Values follow shared/research/model.md §1.1 (full) and §8 (tiny-128, the golden-vector config).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .geometry import FULL_TIERS, TINY_TIERS

VIDEO, AUDIO, TEXT = 0, 1, 2  # modality ids; also the expert chunk order in sandwich layers


@dataclass(frozen=True)
class DiTConfig:
    num_layers: int = 40
    hidden_size: int = 5120
    head_dim: int = 128
    num_query_groups: int = 8                 # kv heads
    video_in_channels: int = 192              # z_dim * patch (1,2,2)
    audio_in_channels: int = 64
    text_in_channels: int = 3584
    mm_layers: tuple[int, ...] = (0, 1, 2, 3, 36, 37, 38, 39)
    gelu7_layers: tuple[int, ...] = (0, 1, 2, 3)
    enable_attn_gating: bool = True
    # 1080p SR only: layers that use frame-local attention for video queries (spec §4.5 item 5)
    local_attn_layers: tuple[int, ...] = ()
    frame_receptive_field: int = 11
    coords_style: str = "v2"                  # "v2" base/distill, "v1" SR models
    rope_base: float = 10000.0
    norm_eps: float = 1e-6

    @property
    def num_heads(self) -> int:
        return self.hidden_size // self.head_dim

    @property
    def rope_bands(self) -> int:
        return self.head_dim // 8

    @property
    def gelu_intermediate(self) -> int:
        return 4 * self.hidden_size

    @property
    def swiglu_intermediate(self) -> int:
        return int(self.hidden_size * 8 / 3) // 4 * 4

    @property
    def qkv_out(self) -> int:
        """Per-expert width of linear_qkv: q | k | v | gate logits."""
        gates = self.num_heads if self.enable_attn_gating else 0
        return self.hidden_size + 2 * self.num_query_groups * self.head_dim + gates

    def replace(self, **kw) -> "DiTConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "DiTConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown DiT config keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def full_dit_config(stage: str = "distill") -> DiTConfig:
    """Released sizes. SR models use v1 coordinates; 1080p SR runs 32 of 40 layers locally
    (all except 3, 7, ..., 31 — Errata 7)."""
    cfg = DiTConfig()
    if stage in ("base", "distill"):
        return cfg
    if stage == "540p_sr":
        return cfg.replace(coords_style="v1")
    if stage == "1080p_sr":
        local = tuple(i for i in range(40) if not (i % 4 == 3 and i < 32))
        return cfg.replace(coords_style="v1", local_attn_layers=local)
    raise ValueError(f"unknown stage {stage!r}")


def tiny_dit_config(stage: str = "distill", audio_in_channels: int = 64) -> DiTConfig:
    """tiny-128 of spec §8 (also the golden-vector config). The 1080p SR variant keeps local
    attention on all layers except 3 with a 1-frame receptive field so that locality actually
    matters for a 1 s clip (7 latent frames). The tiny pipeline uses 8 audio latent channels
    (spec tiny-64) because an Oobleck encoder's width is twice its latent width."""
    cfg = DiTConfig(num_layers=6, hidden_size=128, head_dim=32, num_query_groups=2,
                    video_in_channels=32, audio_in_channels=audio_in_channels, text_in_channels=64,
                    mm_layers=(0, 1, 4, 5), gelu7_layers=(0, 1))
    if stage in ("base", "distill"):
        return cfg
    if stage == "540p_sr":
        return cfg.replace(coords_style="v1")
    if stage == "1080p_sr":
        return cfg.replace(coords_style="v1", local_attn_layers=(0, 1, 2, 4, 5), frame_receptive_field=1)
    raise ValueError(f"unknown stage {stage!r}")


@dataclass(frozen=True)
class PipelineConfig:
    """Sampler and geometry knobs (spec §1.1, §3, §4). Stored as pipeline.json by save_pretrained."""
    fps: int = 25
    z_dim: int = 48
    vae_stride: tuple[int, int, int] = (4, 16, 16)
    audio_latent_rate: int = 25               # 51200 Hz / hop 2048
    audio_model_rate: int = 51200             # the rate trick (spec §3.3)
    sample_rate: int = 44100
    text_max_tokens: int = 640
    shift: float = 5.0
    distill_steps: int = 8
    base_steps: int = 32
    sr_steps: int = 5
    video_cfg_high: float = 5.0
    video_cfg_low: float = 2.0
    video_cfg_switch_t: int = 500             # high guidance while t > 500
    audio_cfg: float = 5.0
    sr_noise_index: int = 220                 # zero-SNR table index for SR partial noising
    sr_audio_noise: float = 0.7
    # short side in pixels per tier (model.geometry turns it into a frame size)
    tiers: dict = field(default_factory=lambda: dict(FULL_TIERS))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["vae_stride"] = list(self.vae_stride)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PipelineConfig":
        d = dict(d)
        if "vae_stride" in d:
            d["vae_stride"] = tuple(d["vae_stride"])
        return cls(**d)


TINY_AUDIO_LATENT = 8


def tiny_pipeline_config() -> PipelineConfig:
    # ByT5 tokens are bytes (the negative prompt alone is ~1.7k): cap text at 128 tokens so that
    # base-profile CFG stays fast while the cap itself is still exercised.
    return PipelineConfig(z_dim=8, text_max_tokens=128, tiers=dict(TINY_TIERS))
