"""Library codecs: Wan2.2 video VAE, Stable Audio Open (Oobleck) audio VAE, T5Gemma text encoder.

Only thin wrappers live here: latent normalisation, the 51.2 kHz audio-rate trick with an FFT
resample to 44.1 kHz, and text encoding without pre-padding (spec §3).
"""
from __future__ import annotations

import contextlib
import warnings

import torch

def _quiet_imports():
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()
    dlog.set_verbosity_error()


@contextlib.contextmanager
def _seeded(seed: int):
    """Library constructors init from the global RNG; fork it so construction is reproducible
    and does not disturb the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ----------------------------------------------------------------------------------------- video
class VideoCodec:
    """Wan2.2 VAE (`diffusers.AutoencoderKLWan`): stride (4,16,16), causal in time
    (F = 4(T-1)+1 frames <-> T latent frames). Latents are normalised per channel with the
    config's latents_mean/std; encode uses the posterior mean; decode clamps to [-1, 1]."""

    def __init__(self, vae):
        self.vae = vae
        cfg = vae.config
        self.mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    @property
    def device(self):
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (1, 3, F, H, W) in [-1, 1] -> normalised latent (1, z, T, H/16, W/16) fp32."""
        p = next(self.vae.parameters())
        mu = self.vae.encode(pixels.to(p.device, p.dtype)).latent_dist.mode().float()
        return (mu - self.mean.to(mu.device)) / self.std.to(mu.device)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        p = next(self.vae.parameters())
        z = latent.float() * self.std.to(latent.device) + self.mean.to(latent.device)
        return self.vae.decode(z.to(p.device, p.dtype)).sample.float().clamp(-1, 1)


def tiny_video_vae(z_dim: int, seed: int):
    from diffusers import AutoencoderKLWan
    with _seeded(seed):
        return AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                attn_scales=[], temperal_downsample=[False, True, True], is_residual=True,
                                in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16,
                                scale_factor_temporal=4, latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim).eval()


def full_video_vae_config() -> dict:
    """Wan2.2 TI2V-5B VAE shape (spec §7); the real latents_mean/std come from the checkpoint."""
    return dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4)


# ----------------------------------------------------------------------------------------- audio
def resample_fft(x: torch.Tensor, src_rate: int, dst_rate: int) -> torch.Tensor:
    """Band-limited FFT resample along the last axis (scipy.signal.resample style).
    Output length = round(N * dst / src); exact for 51200 -> 44100 on multiples of 512 samples."""
    if src_rate == dst_rate:
        return x
    n = x.shape[-1]
    m = int(round(n * dst_rate / src_rate))
    spec = torch.fft.rfft(x.double(), dim=-1)
    keep = min(spec.shape[-1], m // 2 + 1)
    out = torch.zeros(*x.shape[:-1], m // 2 + 1, dtype=spec.dtype, device=x.device)
    out[..., :keep] = spec[..., :keep]
    return (torch.fft.irfft(out, n=m, dim=-1) * (m / n)).to(x.dtype)


class AudioCodec:
    """Stable Audio Open VAE (`diffusers.AutoencoderOobleck`), hop 2048, 64 latent channels.
    The model treats audio as 51 200 Hz so that 51200/2048 = 25 latents/s = video fps; decoded
    audio is resampled by 441/512 to 44 100 Hz (spec §3.3)."""

    def __init__(self, vae, model_rate: int = 51200, out_rate: int = 44100):
        self.vae, self.model_rate, self.out_rate = vae, model_rate, out_rate

    @torch.no_grad()
    def encode(self, wave: torch.Tensor, sample_rate: int, generator: torch.Generator) -> torch.Tensor:
        """wave (channels, samples) -> latent (1, Ta, C). Mono mix, resample to 51.2 kHz, duplicate to
        stereo, encode and SAMPLE the posterior (upstream is stochastic)."""
        return self.sample(*self.posterior(wave, sample_rate), generator)

    @torch.no_grad()
    def posterior(self, wave: torch.Tensor, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The deterministic half of `encode`: the posterior's (mean, std), (1, C, Ta) each."""
        p = next(self.vae.parameters())
        mono = wave.float().mean(0, keepdim=True)
        mono = resample_fft(mono, sample_rate, self.model_rate)
        x = mono.expand(2, -1)[None].to(p.device, p.dtype)
        dist = self.vae.encode(x).latent_dist
        return dist.mean, dist.std

    @staticmethod
    def sample(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The random half of `encode`: a draw from the posterior -> latent (1, Ta, C)."""
        z = mean + std * torch.randn(mean.shape, generator=generator, device=generator.device,
                                     dtype=mean.dtype).to(mean.device)
        return z.float().transpose(1, 2)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent (1, Ta, C) -> float32 (2, Ta*2048*441/512) at 44.1 kHz."""
        p = next(self.vae.parameters())
        wave = self.vae.decode(latent.transpose(1, 2).to(p.device, p.dtype)).sample[0].float()
        return resample_fft(wave.cpu(), self.model_rate, self.out_rate).float()


def tiny_audio_vae(latent_channels: int, seed: int):
    from diffusers import AutoencoderOobleck
    with _seeded(seed), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoencoderOobleck(encoder_hidden_size=2 * latent_channels, downsampling_ratios=[2, 4, 4, 8, 8],
                                  channel_multiples=[1, 2, 4, 8, 16], decoder_channels=8,
                                  decoder_input_channels=latent_channels, audio_channels=2,
                                  sampling_rate=44100).eval()


# ------------------------------------------------------------------------------------------ text
class TextEncoder:
    """T5Gemma encoder. The prompt is tokenised with NO padding or truncation (pre-padding
    degrades output, spec §9 pitfall 11); hidden states are cast to fp16 (as upstream), trimmed to
    `max_tokens`, and returned fp32. Only the real rows enter the DiT."""

    def __init__(self, model, tokenizer, max_tokens: int = 640):
        self.model, self.tokenizer, self.max_tokens = model, tokenizer, max_tokens

    @torch.no_grad()
    def encode(self, prompt: str) -> torch.Tensor:
        device = next(self.model.parameters()).device
        ids = self.tokenizer(prompt, return_tensors="pt", padding=False, truncation=False)["input_ids"].to(device)
        hidden = self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
        return hidden.half()[: self.max_tokens].float()


def tiny_text_encoder(hidden: int, seed: int):
    from transformers import ByT5Tokenizer, T5GemmaConfig, T5GemmaEncoderModel, T5GemmaModuleConfig
    enc = T5GemmaModuleConfig(vocab_size=384, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=8192,
                              sliding_window=64, query_pre_attn_scalar=32)
    with _seeded(seed):
        model = T5GemmaEncoderModel(T5GemmaConfig(encoder=enc, decoder=enc, vocab_size=384, is_encoder_decoder=False))
    return model.eval(), ByT5Tokenizer()


def load_text_encoder(folder, tokenizer_folder, dtype, device, use_safetensors: bool | None = True):
    from transformers import AutoTokenizer, T5GemmaEncoderModel
    model = T5GemmaEncoderModel.from_pretrained(folder, local_files_only=True, is_encoder_decoder=False, dtype=dtype,
                                                use_safetensors=use_safetensors)
    tok = AutoTokenizer.from_pretrained(tokenizer_folder, local_files_only=True)
    return model.to(device).eval(), tok


_quiet_imports()
