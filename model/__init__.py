"""Happy Horse 1.0 (daVinci-MagiHuman architecture) in PyTorch: DiT, codecs, samplers, pipeline.

torch only: this package never imports ray or prefect. Names are imported on first use, so
`model.prompt` (prompt composition, language codes) is usable without loading torch, diffusers
and transformers — the manifest tools and the CLI's light commands rely on that.
"""
from importlib import import_module

_EXPORTS = {
    "CheckpointError": "checkpoint",
    "DiTConfig": "config", "PipelineConfig": "config", "full_dit_config": "config", "tiny_dit_config": "config",
    "DiT": "dit",
    "Clip": "pipeline", "HappyHorsePipeline": "pipeline", "InvalidRequest": "pipeline", "RenderCancelled": "pipeline",
    "RenderRequest": "pipeline", "frame_count": "pipeline", "latent_lengths": "pipeline",
    "LANGUAGES": "prompt", "NEGATIVE_PROMPT": "prompt", "compose_prompt": "prompt", "normalize_language": "prompt",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
