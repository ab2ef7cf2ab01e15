"""The single-stream MagiHuman DiT (spec shared/research/model.md §1), readable top to bottom.

One sequence [video | audio | text] goes through 40 pre-norm layers of full bidirectional
attention + MLP. Layers listed in `mm_layers` ("sandwich" layers) hold three weight chunks
(video, audio, text) for every linear and norm; tokens are routed by modality. There is no
timestep input: the noise level is read off the latents. The module tree mirrors the released
checkpoint keys (`adapter.*`, `block.layers.{i}.*`, `final_*`), so weights load with no renaming.

Precision flow (spec §1.9, Errata 4-5): the residual stream, norms, RoPE, activations, gates,
embedders and heads are fp32; every block linear takes `compute_dtype` operands (bf16) and
returns a `compute_dtype` result, which is then upcast. Setting `compute_dtype = torch.float32`
gives the all-fp32 flow of the golden `fp32compute_*` tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VIDEO, DiTConfig


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma-style RMSNorm in fp32: weights are stored zero-initialised and applied as (1 + w)."""
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + weight.float())


def gelu7(x: torch.Tensor) -> torch.Tensor:
    a = x.clamp(max=7.0)
    return a * torch.sigmoid(1.702 * a)


def swiglu7(x: torch.Tensor) -> torch.Tensor:
    """GPT-OSS style gated unit. Columns are INTERLEAVED: even = gate u, odd = linear v."""
    u = x[..., 0::2].clamp(max=7.0)
    v = x[..., 1::2].clamp(min=-7.0, max=7.0)
    return u * torch.sigmoid(1.702 * u) * (v + 1.0)


def split_by_modality(x: torch.Tensor, counts: tuple[int, int, int]) -> list[torch.Tensor]:
    """The sequence is always [video | audio | text]; routing is slicing three ranges."""
    return list(torch.split(x, list(counts), dim=0))


class FourierRoPE(nn.Module):
    """Per-axis "element-wise Fourier" RoPE (spec §1.7). Each token has 9 coords
    (t,h,w, T,H,W, refT,refH,refW); angle[a,i] = ((coord_a - centre_a) * scale_a) * band_i with
    centre = (size-1)/2 for h,w (0 for t) and scale = (ref-1)/(size-1) (1 when ref = size = 1).
    The table is [sin(3B) | cos(3B)], axis-major (t bands, h bands, w bands)."""

    def __init__(self, num_bands: int, base: float = 10000.0):
        super().__init__()
        i = torch.arange(num_bands, dtype=torch.float64)
        self.register_buffer("bands", (1.0 / base ** (i / num_bands)).float())

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        coords = coords.float()
        pos, size, ref = coords[:, 0:3], coords[:, 3:6], coords[:, 6:9]
        num, den = ref - 1.0, size - 1.0
        if bool(((den == 0) & (num != 0)).any()):
            raise ValueError("RoPE scale (ref-1)/(size-1) divides by zero (e.g. v1 text coords with one token)")
        scale = torch.where(den == 0, torch.ones_like(den), num / torch.where(den == 0, torch.ones_like(den), den))
        centre = torch.cat([torch.zeros_like(size[:, :1]), (size[:, 1:] - 1.0) / 2.0], dim=1)
        angles = (((pos - centre) * scale)[:, :, None] * self.bands.float()).flatten(1)   # (L, 3B)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate-half (GPT-NeoX) on the first 6B head dims: dim j pairs with j+3B, angle j.
    x: (L, heads, head_dim) fp32; table: (L, 6B). Remaining dims pass through."""
    n = table.shape[1] // 2
    sin, cos = table[:, None, :n], table[:, None, n:]
    x1, x2, rest = x[..., :n], x[..., n:2 * n], x[..., 2 * n:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


class RMSNorm(nn.Module):
    """RMSNorm with `experts` weight chunks (video, audio, text) concatenated in one vector."""

    def __init__(self, dim: int, experts: int = 1, eps: float = 1e-6):
        super().__init__()
        self.dim, self.experts, self.eps = dim, experts, eps
        self.weight = nn.Parameter(torch.zeros(dim * experts))

    def forward(self, x: torch.Tensor, counts: tuple[int, int, int]) -> torch.Tensor:
        if self.experts == 1:
            return rms_norm(x, self.weight, self.eps)
        w = self.weight.view(self.experts, self.dim)
        return torch.cat([rms_norm(p, w[m], self.eps) for m, p in enumerate(split_by_modality(x, counts))])


class ExpertLinear(nn.Module):
    """Bias-free block linear stored as one (out * experts, in) weight; rows [m*out:(m+1)*out]
    belong to modality m. Returns a `compute_dtype` result (Errata 4)."""

    def __init__(self, in_features: int, out_features: int, experts: int = 1):
        super().__init__()
        self.out_features, self.experts = out_features, experts
        self.weight = nn.Parameter(torch.empty(out_features * experts, in_features, dtype=torch.bfloat16))

    def forward(self, x: torch.Tensor, counts: tuple[int, int, int], compute_dtype: torch.dtype) -> torch.Tensor:
        w = self.weight.to(compute_dtype)
        x = x.to(compute_dtype)
        if self.experts == 1:
            return F.linear(x, w)
        chunks = w.view(self.experts, self.out_features, -1)
        return torch.cat([F.linear(p, chunks[m]) for m, p in enumerate(split_by_modality(x, counts))])


class Attention(nn.Module):
    def __init__(self, cfg: DiTConfig, experts: int):
        super().__init__()
        self.cfg = cfg
        self.pre_norm = RMSNorm(cfg.hidden_size, experts, cfg.norm_eps)
        self.linear_qkv = ExpertLinear(cfg.hidden_size, cfg.qkv_out, experts)
        self.q_norm = RMSNorm(cfg.head_dim, experts, cfg.norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, experts, cfg.norm_eps)
        self.linear_proj = ExpertLinear(cfg.hidden_size, cfg.hidden_size, experts)

    def forward(self, x, rope, counts, compute_dtype, local_frames=None):
        cfg = self.cfg
        L, H, G, D = x.shape[0], cfg.num_heads, cfg.num_query_groups, cfg.head_dim
        qkv = self.linear_qkv(self.pre_norm(x, counts), counts, compute_dtype).float()
        q, k, v, g = torch.split(qkv, [H * D, G * D, G * D, qkv.shape[1] - (H + 2 * G) * D], dim=1)
        q = apply_rope(self.q_norm(q.reshape(L, H, D), counts), rope)
        k = apply_rope(self.k_norm(k.reshape(L, G, D), counts), rope)
        # (1, heads, L, D) in compute dtype; GQA: query head h uses kv head h // (H // G)
        q = q.to(compute_dtype).transpose(0, 1)[None]
        k = k.to(compute_dtype).transpose(0, 1)[None].repeat_interleave(H // G, dim=1)
        v = v.reshape(L, G, D).to(compute_dtype).transpose(0, 1)[None].repeat_interleave(H // G, dim=1)
        if local_frames is None:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = local_attention(q, k, v, counts, local_frames, cfg.frame_receptive_field)
        out = out[0].transpose(0, 1)                                   # (L, H, D)
        if cfg.enable_attn_gating:
            out = out * torch.sigmoid(g.reshape(L, H, 1))              # -> fp32
        return self.linear_proj(out.reshape(L, H * D), counts, compute_dtype)


def local_attention(q, k, v, counts, frame_tokens: int, field: int):
    """1080p SR attention: a video query of latent frame i sees video keys of frames
    i-field..i+field plus every audio and text key; audio/text queries see everything."""
    nv = counts[VIDEO]
    frames = nv // frame_tokens
    outs = []
    for i in range(frames):
        lo, hi = max(0, i - field) * frame_tokens, min(frames, i + field + 1) * frame_tokens
        keys = torch.cat([k[:, :, lo:hi], k[:, :, nv:]], dim=2)
        vals = torch.cat([v[:, :, lo:hi], v[:, :, nv:]], dim=2)
        outs.append(F.scaled_dot_product_attention(q[:, :, i * frame_tokens:(i + 1) * frame_tokens], keys, vals))
    outs.append(F.scaled_dot_product_attention(q[:, :, nv:], k, v))
    return torch.cat(outs, dim=2)


class MLP(nn.Module):
    def __init__(self, cfg: DiTConfig, experts: int, gelu: bool):
        super().__init__()
        self.gelu = gelu
        inter = cfg.gelu_intermediate if gelu else cfg.swiglu_intermediate
        self.pre_norm = RMSNorm(cfg.hidden_size, experts, cfg.norm_eps)
        self.up_gate_proj = ExpertLinear(cfg.hidden_size, inter if gelu else 2 * inter, experts)
        self.down_proj = ExpertLinear(inter, cfg.hidden_size, experts)

    def forward(self, x, counts, compute_dtype):
        h = self.up_gate_proj(self.pre_norm(x, counts), counts, compute_dtype).float()
        h = gelu7(h) if self.gelu else swiglu7(h)
        return self.down_proj(h, counts, compute_dtype).float()


class Layer(nn.Module):
    def __init__(self, cfg: DiTConfig, index: int):
        super().__init__()
        experts = 3 if index in cfg.mm_layers else 1
        self.local = index in cfg.local_attn_layers
        self.attention = Attention(cfg, experts)
        self.mlp = MLP(cfg, experts, gelu=index in cfg.gelu7_layers)

    def forward(self, x, rope, counts, compute_dtype, frame_tokens=None):
        x = x + self.attention(x, rope, counts, compute_dtype, frame_tokens if self.local else None)
        return x + self.mlp(x, counts, compute_dtype)


class Adapter(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.video_embedder = nn.Linear(cfg.video_in_channels, cfg.hidden_size)
        self.audio_embedder = nn.Linear(cfg.audio_in_channels, cfg.hidden_size)
        self.text_embedder = nn.Linear(cfg.text_in_channels, cfg.hidden_size)
        self.rope = FourierRoPE(cfg.rope_bands, cfg.rope_base)


class Block(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.layers = nn.ModuleList(Layer(cfg, i) for i in range(cfg.num_layers))


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        self.compute_dtype = torch.bfloat16
        self.adapter = Adapter(cfg)
        self.block = Block(cfg)
        self.final_norm_video = RMSNorm(cfg.hidden_size, 1, cfg.norm_eps)
        self.final_norm_audio = RMSNorm(cfg.hidden_size, 1, cfg.norm_eps)
        self.final_linear_video = nn.Linear(cfg.hidden_size, cfg.video_in_channels, bias=False)
        self.final_linear_audio = nn.Linear(cfg.hidden_size, cfg.audio_in_channels, bias=False)

    def embed(self, video, audio, text) -> torch.Tensor:
        a = self.adapter
        return torch.cat([a.video_embedder(video.float()), a.audio_embedder(audio.float()),
                          a.text_embedder(text.float())]).float()

    def forward(self, video: torch.Tensor, audio: torch.Tensor, text: torch.Tensor, coords: torch.Tensor,
                frame_tokens: int | None = None, return_hidden: bool = False):
        """video (Nv, video_in) channel-major patches, audio (Na, audio_in), text (Nt, text_in),
        coords (Nv+Na+Nt, 9). `frame_tokens` (video tokens per latent frame) is needed only by
        local-attention layers. Returns video (Nv, video_in) spatial-major and audio (Na, audio_in)
        velocities."""
        counts = (video.shape[0], audio.shape[0], text.shape[0])
        if any(layer.local for layer in self.block.layers) and frame_tokens is None:
            raise ValueError("this DiT has local-attention layers: pass frame_tokens")
        rope = self.adapter.rope(coords)
        x = self.embed(video, audio, text)
        hidden = []
        for layer in self.block.layers:
            x = layer(x, rope, counts, self.compute_dtype, frame_tokens)
            if return_hidden:
                hidden.append(x)
        xv, xa, _ = split_by_modality(x, counts)
        v = self.final_linear_video(self.final_norm_video(xv, counts).float())
        a = self.final_linear_audio(self.final_norm_audio(xa, counts).float())
        return (v, a, hidden) if return_hidden else (v, a)


@torch.no_grad()
def init_random_(model: DiT, seed: int) -> DiT:
    """Deterministic random init (the golden-vector procedure): one fp32 randn per parameter in
    named_parameters() order, std 0.1 for norm weights and 0.02 otherwise, cast to the
    parameter's dtype."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        std = 0.1 if "norm" in name else 0.02
        p.copy_((torch.randn(p.shape, generator=gen, dtype=torch.float32) * std).to(p.dtype))
    return model


def build_dit(cfg: DiTConfig, device: str | torch.device = "cpu") -> DiT:
    """Build with big linears in bf16 and everything else fp32 (spec §1.9)."""
    with torch.device(device):
        return DiT(cfg)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["DiT", "build_dit", "init_random_", "apply_rope", "FourierRoPE", "gelu7", "swiglu7", "rms_norm",
           "param_count"]
