"""Token packing: latents <-> DiT token rows, and the per-token RoPE coordinates (spec §1.4, §1.7, §1.8).

Input video patches are CHANNEL-major (feature = c*4 + ph*2 + pw); the DiT's video output is
SPATIAL-major (feature = (ph*2 + pw)*C + c). The asymmetry is deliberate (spec §9 pitfall 1).
"""
from __future__ import annotations

import torch


def patchify(video: torch.Tensor) -> torch.Tensor:
    """(1, C, T, h, w) latent -> (T*h/2*w/2, C*4) tokens, raster over (t, h/2, w/2), channel-major."""
    _, C, T, h, w = video.shape
    if h % 2 or w % 2:
        raise ValueError(f"latent height/width must be even, got {h}x{w}")
    x = video[0].reshape(C, T, h // 2, 2, w // 2, 2)
    return x.permute(1, 2, 4, 0, 3, 5).reshape(T * (h // 2) * (w // 2), C * 4)


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(N, 4*C) spatial-major DiT output -> (1, C, T, h, w)."""
    T, hp, wp = grid
    C = tokens.shape[1] // 4
    x = tokens.reshape(T, hp, wp, 2, 2, C)
    return x.permute(5, 0, 1, 3, 2, 4).reshape(1, C, T, hp * 2, wp * 2)


def video_coords(T: int, hp: int, wp: int) -> torch.Tensor:
    t, r, c = torch.meshgrid(torch.arange(T), torch.arange(hp), torch.arange(wp), indexing="ij")
    pos = torch.stack([t, r, c], -1).reshape(-1, 3).float()
    size = torch.tensor([T, hp, wp], dtype=torch.float32).expand(pos.shape[0], 3)
    return torch.cat([pos, size, size], dim=1)


def audio_coords(Ta: int, T: int, style: str) -> torch.Tensor:
    """Audio token k sits at (k, 0, 0); ref time = (Ta-1)//4+1 (v2) or the video's T (v1)."""
    ref_t = (Ta - 1) // 4 + 1 if style == "v2" else T
    k = torch.arange(Ta, dtype=torch.float32)[:, None]
    z = torch.zeros(Ta, 2)
    return torch.cat([k, z, torch.tensor([Ta, 1, 1.0]).expand(Ta, 3), torch.tensor([ref_t, 1, 1.0]).expand(Ta, 3)], 1)


def text_coords(Lt: int, style: str) -> torch.Tensor:
    """v2 (base/distill): t = -Lt..-1 with ref 1 -> zero angles for 2+ tokens (one token sits at
    t=-1 with scale 1, Errata 1). v1 (SR): t = 0..Lt-1 with ref 2 (scaled into [0, 1])."""
    if style == "v2":
        t, ref_t = torch.arange(-Lt, 0, dtype=torch.float32), 1.0
    elif style == "v1":
        t, ref_t = torch.arange(Lt, dtype=torch.float32), 2.0
    else:
        raise ValueError(f"unknown coords style {style!r}")
    return torch.cat([t[:, None], torch.zeros(Lt, 2), torch.tensor([Lt, 1, 1.0]).expand(Lt, 3),
                      torch.tensor([ref_t, 1, 1.0]).expand(Lt, 3)], 1)


def build_coords(grid: tuple[int, int, int], Ta: int, Lt: int, style: str) -> torch.Tensor:
    return torch.cat([video_coords(*grid), audio_coords(Ta, grid[0], style), text_coords(Lt, style)])


def pack(video: torch.Tensor, audio: torch.Tensor, text: torch.Tensor, style: str):
    """Reference-layout packed sequence (for parity checks): returns (x zero-padded to the widest
    modality, coords (L, 9), modality ids (L,)). The pipeline feeds the three parts separately."""
    v = patchify(video)
    a, t = audio[0], text[0]
    width = max(v.shape[1], a.shape[1], t.shape[1])
    x = torch.cat([F_pad(v, width), F_pad(a, width), F_pad(t, width)])
    _, _, T, h, w = video.shape
    coords = build_coords((T, h // 2, w // 2), a.shape[0], t.shape[0], style)
    modality = torch.cat([torch.full((n,), m, dtype=torch.int64) for m, n in enumerate((v.shape[0], a.shape[0], t.shape[0]))])
    return x, coords, modality


def F_pad(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[1]))
