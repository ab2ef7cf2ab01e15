"""Sampling schedules and update rules (spec §4).

Flow matching: x_sigma = (1-sigma) x0 + sigma eps, model output v = eps - x0, x0_hat = x - sigma v.
Schedule for N steps: s = linspace(0.999, 0, N+1)[:-1], shifted sigma = shift*s/(1+(shift-1)s),
final 0 appended; the reported timestep is int(1000*sigma) (truncation).
"""
from __future__ import annotations

import numpy as np
import torch


def unshifted_sigmas(num_steps: int) -> np.ndarray:
    return np.linspace(0.999, 0.0, num_steps + 1)[:-1]


def flow_sigmas(num_steps: int, shift: float = 5.0) -> np.ndarray:
    """N+1 sigmas ending in 0 (float64)."""
    s = unshifted_sigmas(num_steps)
    return np.append(shift * s / (1.0 + (shift - 1.0) * s), 0.0)


def flow_timesteps(num_steps: int, shift: float = 5.0) -> list[int]:
    return [int(1000 * s) for s in flow_sigmas(num_steps, shift)[:-1]]


def video_guidance(t: int, high: float = 5.0, low: float = 2.0, switch_t: int = 500) -> float:
    """Base model video CFG scale: high while t > 500, low afterwards (last 5 of 32 steps)."""
    return high if t > switch_t else low


def make_unipc(num_steps: int, shift: float = 5.0, device="cpu"):
    """diffusers UniPC (bh2, order 2, predict-x0, flow sigmas, final sigma 0, corrector from step
    1). diffusers' own flow-sigma grid starts at 1 - 1e-6 instead of 0.999, so we pass the
    spec's unshifted grid and let diffusers apply the shift; tests pin the resulting table."""
    from diffusers import UniPCMultistepScheduler
    sched = UniPCMultistepScheduler(num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction",
                                    use_flow_sigmas=True, flow_shift=shift, solver_type="bh2", lower_order_final=True,
                                    final_sigmas_type="zero", predict_x0=True)
    sched.set_timesteps(sigmas=unshifted_sigmas(num_steps), device=device)
    return sched


def distill_step(x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float,
                 noise: torch.Tensor | None) -> torch.Tensor:
    """DMD-style step of the distilled model: predict x0, then re-noise to sigma_next with FRESH
    Gaussian noise (the last step returns x0_hat)."""
    x0 = x - sigma * v
    if sigma_next == 0:
        return x0
    return sigma_next * noise + (1.0 - sigma_next) * x0


def zero_snr_sqrt_alphas_cumprod(num_train_timesteps: int = 1000) -> np.ndarray:
    """sqrt(alpha_bar) of a linear-sqrt ("scaled_linear") beta table 0.00085..0.012, rescaled to
    zero terminal SNR (index 0 = cleanest, last = pure noise)."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, num_train_timesteps, dtype=np.float64) ** 2
    s = np.sqrt(np.cumprod(1.0 - betas))
    first, last = s[0], s[-1]
    return (s - last) * first / (first - last)


def sr_noise_coefficients(index: int = 220) -> tuple[float, float]:
    """SR partial noising z = a z + sqrt(1-a^2) eps with a = zero-SNR sqrt(alpha_bar)[220] = 0.8389."""
    a = float(zero_snr_sqrt_alphas_cumprod()[index])
    return a, float(np.sqrt(1.0 - a * a))
