"""The pipeline's modules: loaded from a checkpoint stack (strictly), saved to one, or built as
the tiny preset from a seed. Which files make a stack and its fingerprint: `model.stack`."""
from __future__ import annotations

import json
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .adapters import base_state_dict
from .codecs import (AudioCodec, TextEncoder, VideoCodec, load_text_encoder, tiny_audio_vae, tiny_text_encoder,
                     tiny_video_vae)
from .config import TINY_AUDIO_LATENT, DiTConfig, PipelineConfig, full_dit_config, tiny_dit_config, tiny_pipeline_config
from .dit import DiT, ExpertLinear, build_dit, init_random_
from .offload import module_bytes
from .stack import (DIT_STAGES, FORMAT_VERSION, describe_tiny, dit_fingerprint, dit_stage_files, present_stages,
                    read_pipeline_config, stack_files, stage_fingerprints, tiny_fingerprint)

# Share of the GPU's memory the weights may take; the rest is for activations.
WEIGHTS_SHARE_OF_GPU = 0.7


@dataclass
class Stack:
    """The modules of a model and what identifies them."""
    dits: dict[str, DiT]
    text_encoder: TextEncoder
    video_codec: VideoCodec
    audio_codec: AudioCodec
    config: PipelineConfig
    fingerprint: str
    weight_hashes: dict[str, str] = field(default_factory=dict)    # relative path -> sha256
    stage_fingerprints: dict[str, str] = field(default_factory=dict)   # model.stack.stage_fingerprints


def build_tiny(seed: int) -> Stack:
    """Random-weight preset with every architectural feature (spec §8 tiny-128), seeded."""
    cfg = tiny_pipeline_config()
    dits = {stage: tiny_dit(seed, stage) for stage in DIT_STAGES}
    te_model, tok = tiny_text_encoder(dits["distill"].cfg.text_in_channels, seed * 1000 + 11)
    fingerprint = tiny_fingerprint(seed, cfg, {stage: dit.cfg for stage, dit in dits.items()})
    return Stack(dits, TextEncoder(te_model, tok, cfg.text_max_tokens),
                 VideoCodec(tiny_video_vae(cfg.z_dim, seed * 1000 + 12)),
                 AudioCodec(tiny_audio_vae(dits["distill"].cfg.audio_in_channels, seed * 1000 + 13),
                            cfg.audio_model_rate, cfg.sample_rate),
                 cfg, fingerprint, stage_fingerprints=stage_fingerprints(fingerprint, {}, cfg))


def tiny_dit(seed: int, stage: str) -> DiT:
    """One DiT of the tiny preset, as `build_tiny(seed)` builds it."""
    return init_random_(build_dit(tiny_dit_config(stage, TINY_AUDIO_LATENT)), seed * 1000 + DIT_STAGES.index(stage)).eval()


def load_dit(model: str | Path, stage: str, tiny_seed: int = 0, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.bfloat16) -> tuple[DiT, str]:
    """One DiT stage alone and its fingerprint (`model.stack.dit_fingerprint`): what adapter
    training needs, without the text encoder and VAEs. `model` is "tiny" or a checkpoint folder."""
    if str(model) == "tiny":
        return tiny_dit(tiny_seed, stage), dit_fingerprint(describe_tiny(tiny_seed).fingerprint, {}, stage)
    folder = Path(model)
    cfg_path = folder / stage / "config.json"
    cfg = DiTConfig.from_dict(json.loads(cfg_path.read_text())) if cfg_path.exists() else full_dit_config(stage)
    dit = meta_dit(cfg, dtype)
    dit.compute_dtype = dtype
    digests = ckpt.load_into(dit, folder / stage, device=device)
    _, hashes = ckpt.fingerprint_files(folder, dit_stage_files(folder, stage), digests)
    return dit.eval(), dit_fingerprint("", hashes, stage)


def load_stack(folder: str | Path, device: torch.device, dtype: torch.dtype, offload: bool, allow_pickle: bool,
               stages: tuple[str, ...] | None) -> tuple[Stack, bool]:
    """Load the DiT stages present (of `stages`) and the library stages; returns the stack and
    whether it must be offloaded (asked for, or the weights would not leave room on the GPU).
    Every check (layout, pickle refusal, DiT keys and shapes from headers) runs before any
    tensor is read; the fingerprint hashes exactly the files `stack_files` lists."""
    folder = Path(folder)
    present = present_stages(folder, stages)
    files = stack_files(folder, present, allow_pickle)
    metas: dict[str, DiT] = {}
    for stage in present:
        cfg_path = folder / stage / "config.json"
        cfg = DiTConfig.from_dict(json.loads(cfg_path.read_text())) if cfg_path.exists() else full_dit_config(stage)
        metas[stage] = meta_dit(cfg, dtype)
        expected = {k: tuple(v.shape) for k, v in (*metas[stage].named_parameters(), *metas[stage].named_buffers())}
        ckpt.validate(folder / stage, expected, allow_pickle)
    if device.type == "cuda" and not offload:
        need = sum(module_bytes(d) for d in metas.values())
        need += sum(p.stat().st_size for p in (folder / "text_encoder").rglob("*.safetensors"))
        if need > WEIGHTS_SHARE_OF_GPU * torch.cuda.get_device_properties(device).total_memory:
            warnings.warn(f"the checkpoint stack (~{need / 2**30:.0f} GiB) leaves no room for activations on "
                          f"{device}; offloading idle stages to the CPU (pass stages=... to load fewer)")
            offload = True
    place = torch.device("cpu") if offload else device
    config = read_pipeline_config(folder)
    te_dtype = dtype if device.type == "cuda" else torch.float32
    dits: dict[str, DiT] = {}
    digests: dict[Path, str] = {}      # sha256 of the DiT shards, computed while loading them
    # The DiT shards are read in the background (I/O and hashing, which release the GIL) while the
    # library stages are built here (Python-bound, seconds). The DiTs take their weights after:
    # the libraries build under accelerate's init_empty_weights, which patches
    # nn.Module.register_parameter process-wide while it runs.
    with ThreadPoolExecutor(max_workers=1) as side:
        reads = {stage: side.submit(ckpt.read_weights, dit, folder / stage, allow_pickle, place)
                 for stage, dit in metas.items()}
        text_encoder, video_codec, audio_codec = load_library_stages(folder, config, te_dtype, place, allow_pickle)
        for stage, dit in metas.items():
            state, stage_digests = reads[stage].result()
            dit.load_state_dict(state, strict=True, assign=True)
            dit.compute_dtype = dtype
            dits[stage] = dit.eval()
            digests.update(stage_digests)
    fingerprint, hashes = ckpt.fingerprint_files(folder, files, digests)
    return Stack(dits, text_encoder, video_codec, audio_codec, config, fingerprint, hashes,
                 stage_fingerprints(fingerprint, hashes, config)), offload


def load_library_stages(folder: Path, config: PipelineConfig, te_dtype: torch.dtype, place: torch.device,
                        allow_pickle: bool) -> tuple[TextEncoder, VideoCodec, AudioCodec]:
    """The text encoder (with its tokenizer) and the two VAEs of a stack folder, by their libraries."""
    # Libraries prefer safetensors; without the opt-in they may read nothing else.
    use_safetensors = None if allow_pickle else True
    tok_dir = folder / "tokenizer" if (folder / "tokenizer").is_dir() else folder / "text_encoder"
    te_model, tok = load_text_encoder(folder / "text_encoder", tok_dir, te_dtype, place, use_safetensors)
    from diffusers import AutoencoderKLWan, AutoencoderOobleck
    video_vae = AutoencoderKLWan.from_pretrained(folder / "video_vae", local_files_only=True,
                                                 use_safetensors=use_safetensors).eval()
    with warnings.catch_warnings():    # diffusers' Oobleck still uses the deprecated weight_norm
        warnings.simplefilter("ignore", FutureWarning)
        audio_vae = AutoencoderOobleck.from_pretrained(folder / "audio_vae", local_files_only=True,
                                                       use_safetensors=use_safetensors).eval()
    return (TextEncoder(te_model, tok, config.text_max_tokens), VideoCodec(video_vae),
            AudioCodec(audio_vae, config.audio_model_rate, config.sample_rate))


def meta_dit(cfg: DiTConfig, dtype: torch.dtype) -> DiT:
    """A DiT on the meta device (no memory) as it will be loaded: block linears in `dtype`, the rest fp32."""
    with torch.device("meta"):
        dit = DiT(cfg)
    for mod in dit.modules():
        if isinstance(mod, ExpertLinear):
            mod.weight.data = mod.weight.data.to(dtype)
    return dit


def save_stack(stack, folder: str | Path, max_shard_bytes: int) -> None:
    """Write the released folder layout: <stage>/ sharded safetensors for each DiT (plus our
    config.json), text_encoder/, tokenizer/, audio_vae/, video_vae/, pipeline.json. `stack`: a
    Stack or a pipeline (anything with its modules and config)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stage, dit in stack.dits.items():
        ckpt.save_sharded(base_state_dict(dit), folder / stage, max_shard_bytes)
        (folder / stage / "config.json").write_text(dit.cfg.to_json())
    stack.text_encoder.model.save_pretrained(folder / "text_encoder")
    stack.text_encoder.tokenizer.save_pretrained(folder / "tokenizer")
    stack.audio_codec.vae.save_pretrained(folder / "audio_vae")
    stack.video_codec.vae.save_pretrained(folder / "video_vae")
    (folder / "pipeline.json").write_text(json.dumps({"format": FORMAT_VERSION, **stack.config.to_dict()}, indent=2))
