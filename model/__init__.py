"""Happy Horse 1.0 (daVinci-MagiHuman architecture) in PyTorch: DiT, codecs, samplers, pipeline.

torch only: this package never imports ray or prefect.
"""
from .checkpoint import CheckpointError
from .config import DiTConfig, PipelineConfig, full_dit_config, tiny_dit_config
from .dit import DiT
from .pipeline import (Clip, HappyHorsePipeline, InvalidRequest, RenderCancelled, RenderRequest, frame_count,
                       latent_lengths)
from .prompt import LANGUAGES, NEGATIVE_PROMPT, compose_prompt, normalize_language

__all__ = ["HappyHorsePipeline", "RenderRequest", "Clip", "InvalidRequest", "RenderCancelled", "CheckpointError",
           "compose_prompt", "normalize_language", "LANGUAGES", "NEGATIVE_PROMPT", "DiT", "DiTConfig",
           "PipelineConfig", "full_dit_config", "tiny_dit_config", "frame_count", "latent_lengths"]
