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
    files: list[Path] = []
    for stage in stages:
        sub = folder / stage
        files += ckpt.weight_files(sub, allow_pickle).values()
        files += [p for p in (sub / "config.json", sub / ckpt.INDEX_NAME) if p.exists()]
    for stage in LIBRARY_STAGES:
        sub = folder / stage
        if sub.is_dir():
            ckpt.refuse_pickle(sub, allow_pickle)
            files += [p for p in sub.rglob("*") if p.is_file()]
    if (folder / "pipeline.json").exists():
        files.append(folder / "pipeline.json")
    return sorted(set(files))


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
    """sha256 per stage: over the digests of the files under its folder (`weight_hashes`: path
    relative to the stack folder -> sha256, the same `name\0digest\n` lines as the stack
    fingerprint); for the tiny preset, which has no files, over the stack fingerprint and the
    stage name. "pipeline" is the sampler/geometry config itself, so a stack without a
    pipeline.json (defaults) has one too."""
    per_stage: dict[str, list[str]] = {}
    for name in sorted(weight_hashes):
        stage, sep, _ = name.partition("/")
        if sep:                                       # top-level files: pipeline.json, covered below
            per_stage.setdefault(stage, []).append(f"{name}\0{weight_hashes[name]}\n")
    if weight_hashes:
        digests = {stage: hashlib.sha256("".join(lines).encode()).hexdigest() for stage, lines in per_stage.items()}
    else:
        digests = {stage: hashlib.sha256(f"{stack_fingerprint}\0{stage}".encode()).hexdigest()
                   for stage in (*DIT_STAGES, *LIBRARY_STAGES)}
    digests["pipeline"] = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()
    return digests
