"""Happy Horse 1.0 (daVinci-MagiHuman architecture) in PyTorch: DiT, codecs, samplers, pipeline.

torch only: this package never imports ray or prefect. Names are imported on first use, so the
torch-free parts — prompt composition and language codes (`model.prompt`), output geometry
(`model.geometry`), request types (`model.request`) and checkpoint descriptions for planning
(`model.stack`) — load without torch, diffusers and transformers; the manifest tools, the
planner and the CLI's light commands rely on that.
"""
from importlib import import_module

_EXPORTS = {
    "AdapterError": "errors", "CheckpointError": "errors", "InvalidRequest": "errors", "RenderCancelled": "errors",
    "StageResultError": "errors", "Adapter": "adapters", "AdapterConfig": "adapters",
    "DiTConfig": "config", "PipelineConfig": "config", "full_dit_config": "config", "tiny_dit_config": "config",
    "ASPECT_RATIOS": "geometry", "RESOLUTIONS": "geometry", "output_size": "geometry",
    "Clip": "request", "RenderRequest": "request", "frame_count": "request", "latent_lengths": "request",
    "ModelDescription": "stack", "describe_checkpoint": "stack", "describe_tiny": "stack",
    "StageResult": "stages", "render_stages": "stages", "stage_key_inputs": "stages",
    "DiT": "dit",
    "HappyHorsePipeline": "pipeline",
    "LANGUAGES": "prompt", "NEGATIVE_PROMPT": "prompt", "compose_prompt": "prompt", "normalize_language": "prompt",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
