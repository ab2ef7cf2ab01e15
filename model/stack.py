"""A checkpoint stack as files: its layout, its fingerprint, and a description for planning.

Released layout (spec §2): one folder per DiT stage (base/, distill/, 540p_sr/, 1080p_sr/, each
in the format of `model.checkpoint`), the library stages text_encoder/, tokenizer/, video_vae/,
audio_vae/, and our pipeline.json. turbo_vae/ (Turbo-VAED, a pickle) is never read: the Wan2.2
decoder renders instead (the spec's §3.2 fallback), so it is neither checked nor fingerprinted.

No torch here: planning describes a stack (fingerprint, output sizes) without loading it, and
the description of the tiny preset is computed from its configs alone.

Stage fingerprints: one sha256 per stage of the stack (each DiT, each library folder, and
"pipeline" for the sampler/geometry config), so that a stage result's key names only the stages
it was made with (`model.stages`) and changing one stage does not invalidate the others.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from . import checkpoint as ckpt
from .config import TINY_AUDIO_LATENT, PipelineConfig, tiny_dit_config, tiny_pipeline_config
from .errors import CheckpointError
from .geometry import SR_STAGE, output_size

DIT_STAGES = ("base", "distill", *SR_STAGE.values())
LIBRARY_STAGES = ("text_encoder", "tokenizer", "video_vae", "audio_vae")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelDescription:
    """What a planner needs without loading any tensor: the fingerprint the loaded pipeline will
    report, the DiT stages it will have, its sampler/geometry config and the fingerprint of each
    stage (`stage_fingerprints`, the same as the loaded pipeline's)."""
    fingerprint: str
    stages: tuple[str, ...]
    config: PipelineConfig
    stage_fingerprints: dict[str, str]

    def size_for(self, resolution: str, aspect_ratio: str) -> tuple[int, int]:
        """(width, height) of a tier and aspect ratio; see `model.geometry.output_size`."""
        return output_size(self.config.tiers, resolution, aspect_ratio)


def read_pipeline_config(folder: Path) -> PipelineConfig:
    pipe_json = folder / "pipeline.json"
    if not pipe_json.exists():
        return PipelineConfig()
    d = json.loads(pipe_json.read_text())
    d.pop("format", None)
    return PipelineConfig.from_dict(d)


def present_stages(folder: Path, stages: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The DiT stages (of `stages`, default all) that `folder` holds; checks the stack is usable:
    one of base/ or distill/, and every library stage but the optional tokenizer/."""
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    unknown = set(stages or ()) - set(DIT_STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {DIT_STAGES}")
    present = tuple(stage for stage in stages or DIT_STAGES if (folder / stage).is_dir())
    if not {"base", "distill"} & set(present):
        raise CheckpointError(f"{folder}: needs a base/ or distill/ DiT folder (found {sorted(present) or 'none'})")
    for sub in ("text_encoder", "video_vae", "audio_vae"):
        if not (folder / sub).is_dir():
            raise CheckpointError(f"{folder}: missing {sub}/ folder")
    return present


def stack_files(folder: Path, stages: tuple[str, ...], allow_pickle: bool = False) -> list[Path]:
    """Every file a load of these DiT stages reads: the DiTs' weights, configs and indexes, the
    library stage folders, pipeline.json. Pickle files are refused in every one of them unless
    allow_pickle (the same rule `from_pretrained` applies, so a stack that describes also loads)."""
    files = [f for stage in stages for f in dit_stage_files(folder, stage, allow_pickle)]
    for stage in LIBRARY_STAGES:
        sub = folder / stage
        if sub.is_dir():
            ckpt.refuse_pickle(sub, allow_pickle)
            files += [p for p in sub.rglob("*") if p.is_file()]
    if (folder / "pipeline.json").exists():
        files.append(folder / "pipeline.json")
    return sorted(set(files))


def dit_stage_files(folder: Path, stage: str, allow_pickle: bool = False) -> list[Path]:
    """The files of one DiT stage folder: its weights, config and index."""
    sub = folder / stage
    files = list(dict.fromkeys(ckpt.weight_files(sub, allow_pickle).values()))
    return files + [p for p in (sub / "config.json", sub / ckpt.INDEX_NAME) if p.exists()]


def dit_fingerprint(stack_fingerprint: str, weight_hashes: dict[str, str], stage: str) -> str:
    """The identity of one stage folder (a DiT stage is what an adapter is trained against; stage
    keys name the folders a stage result depends on): a sha256 over the digests of its files (a loaded checkpoint; `weight_hashes` maps paths relative to
    the stack folder to sha256), or over the stack fingerprint and the stage name (the tiny
    preset, whose weights follow from its seed). Loading fewer stages does not change it."""
    h = hashlib.sha256()
    files = sorted(name for name in weight_hashes if name.startswith(f"{stage}/"))
    if files:
        for name in files:
            h.update(f"{name}\0{weight_hashes[name]}\n".encode())
    else:
        h.update(f"{stack_fingerprint}\0{stage}".encode())
    return h.hexdigest()


def describe_checkpoint(folder: str | Path, stages: tuple[str, ...] | None = None,
                        allow_pickle: bool = False) -> ModelDescription:
    """The description of a checkpoint folder that `HappyHorsePipeline.from_pretrained` would load
    with the same arguments; reads headers and hashes files (digests are cached), no tensors."""
    folder = Path(folder)
    present = present_stages(folder, stages)
    fingerprint, hashes = ckpt.fingerprint_files(folder, stack_files(folder, present, allow_pickle))
    config = read_pipeline_config(folder)
    return ModelDescription(fingerprint, present, config, stage_fingerprints(fingerprint, hashes, config))


def tiny_fingerprint(seed: int, config: PipelineConfig, dit_configs: dict) -> str:
    """The tiny preset has no files: its fingerprint is a sha256 of its seed and configs."""
    desc = {"preset": "tiny", "seed": seed, "format": FORMAT_VERSION, "pipeline": config.to_dict(),
            "dits": {stage: cfg.to_dict() for stage, cfg in dit_configs.items()}}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


def describe_tiny(seed: int = 0) -> ModelDescription:
    """The description of `HappyHorsePipeline.tiny(seed)`, without building it."""
    config = tiny_pipeline_config()
    dit_configs = {stage: tiny_dit_config(stage, TINY_AUDIO_LATENT) for stage in DIT_STAGES}
    fingerprint = tiny_fingerprint(seed, config, dit_configs)
    return ModelDescription(fingerprint, DIT_STAGES, config, stage_fingerprints(fingerprint, {}, config))


def stage_fingerprints(stack_fingerprint: str, weight_hashes: dict[str, str], config: PipelineConfig) -> dict[str, str]:
    """sha256 per stage folder of the stack (`dit_fingerprint` of each), and "pipeline": the
    sampler/geometry config itself, so a stack without a pipeline.json (defaults) has one too."""
    folders = {name.partition("/")[0] for name in weight_hashes if "/" in name} or {*DIT_STAGES, *LIBRARY_STAGES}
    digests = {stage: dit_fingerprint(stack_fingerprint, weight_hashes, stage) for stage in folders}
    digests["pipeline"] = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()
    return digests
