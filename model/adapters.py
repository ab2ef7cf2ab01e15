"""Brand adapters as data: a low-rank (LoRA) adapter's config, tensors, files, address and fit.

An adapter holds one low-rank pair (A, B) per targeted linear of one DiT stage, plus its config:
rank, alpha, targets (block linears and/or the embedders and heads), the layers it covers, the
stage it was trained on and that DiT's fingerprint (`model.stack.dit_fingerprint`). In a sandwich
layer a block linear stores three experts (video, audio, text) as one (out*3, in) weight; its
adapter holds one pair per expert in the same row layout — A (rank*3, in), B (out*3, rank), expert
m owning rows [m*rank:(m+1)*rank] of A and [m*out:(m+1)*out] of B — and adds
(alpha/rank) * strength * B_m A_m x to the tokens of modality m.

Files: a folder (adapter_config.json + adapter_model.safetensors), or one safetensors file with the
config in its header (`to_bytes`, the form the catalog stores). `sha256` is the digest of that one
file, so an adapter has one address whichever form it was read from. Key names are our module
paths, which are the reference implementation's; keys written by other trainers are mapped on load
(wrapper prefixes such as `base_model.model.`, `module.`, `_orig_mod.`, `diffusion_model.`, peft's
adapter-name segment, kohya's lora_down/lora_up/alpha). Applying adapters to a pipeline:
`model.lora` (peft); training: `model.adapter_training`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from .config import DiTConfig
from .dit import DiT, ExpertLinear
from .errors import AdapterError
from .stack import DIT_STAGES

FORMAT = "horse-lora/1"
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
METADATA_KEY = "horse_adapter"          # the config inside the single-file form's header

BLOCK_LINEARS = ("linear_qkv", "linear_proj", "up_gate_proj", "down_proj")
EMBEDDERS = ("video_embedder", "audio_embedder", "text_embedder")
HEADS = ("final_linear_video", "final_linear_audio")
TARGETS = BLOCK_LINEARS + EMBEDDERS + HEADS

# Where our module paths start inside a foreign key, and the two tensor-name shapes we accept.
_ROOT = re.compile(r"(?:^|\.)(?=(?:block\.layers|adapter|final_linear_video|final_linear_audio)\.)")
_LORA_KEY = re.compile(r"(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.[^.]+)?\.weight")
_ALPHA_KEY = re.compile(r"(?P<module>.+)\.alpha")
_WRAPPERS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
_KIND = {"lora_A": "lora_A", "lora_down": "lora_A", "lora_B": "lora_B", "lora_up": "lora_B"}
_BLOCK_MODULE = re.compile(r"block\.layers\.(\d+)\.(?:attention|mlp)\.(\w+)")


def module_path(target: str, layer: int | None = None) -> str:
    """Our (and the reference's) module path of a target name."""
    if target in BLOCK_LINEARS:
        return f"block.layers.{layer}.{'attention' if target in ('linear_qkv', 'linear_proj') else 'mlp'}.{target}"
    return f"adapter.{target}" if target in EMBEDDERS else target


@dataclass(frozen=True)
class AdapterConfig:
    rank: int
    alpha: float
    stage: str                                   # the DiT stage it was trained on
    base_fingerprint: str                        # model.stack.dit_fingerprint of that DiT
    targets: tuple[str, ...] = BLOCK_LINEARS
    layers: tuple[int, ...] | None = None        # block layers covered; None = all

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise AdapterError(f"rank: must be a positive integer, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha) \
                or self.alpha == 0:
            raise AdapterError(f"alpha: must be a finite non-zero number, got {self.alpha!r}")
        if self.stage not in DIT_STAGES:
            raise AdapterError(f"stage: must be one of {DIT_STAGES}, got {self.stage!r}")
        if not isinstance(self.base_fingerprint, str) or not re.fullmatch(r"[0-9a-f]{64}", self.base_fingerprint):
            raise AdapterError(f"base_fingerprint: must be a sha256 hex digest, got {self.base_fingerprint!r}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise AdapterError(f"targets: unknown target {unknown[0]!r} (choose from {', '.join(TARGETS)})" if unknown
                               else "targets: empty")
        if self.layers is not None and any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.layers):
            raise AdapterError(f"layers: must be non-negative layer indices, got {list(self.layers)}")
        # one spelling per adapter, so that equal adapters have equal bytes and sha256
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "targets", tuple(t for t in TARGETS if t in self.targets))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(sorted(set(self.layers))))

    def module_names(self, dit_cfg: DiTConfig) -> list[str]:
        """The module paths this adapter covers in a DiT of `dit_cfg`."""
        layers = range(dit_cfg.num_layers) if self.layers is None else self.layers
        if any(i >= dit_cfg.num_layers for i in layers):
            raise AdapterError(f"layers: {max(layers)} is out of range (this DiT has {dit_cfg.num_layers} layers)")
        names = [module_path(t, i) for i in layers for t in self.targets if t in BLOCK_LINEARS]
        return names + [module_path(t) for t in self.targets if t not in BLOCK_LINEARS]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        d["layers"] = None if self.layers is None else list(self.layers)
        return {"format": FORMAT, **d}

    @classmethod
    def from_dict(cls, d: dict) -> "AdapterConfig":
        d = dict(d)
        if d.pop("format", None) != FORMAT:
            raise AdapterError(f"{CONFIG_NAME}: format must be {FORMAT!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(d) - names), sorted(n for n in ("rank", "alpha", "stage", "base_fingerprint")
                                                         if n not in d)
        if unknown or missing:
            raise AdapterError(f"{CONFIG_NAME}: " + (f"unknown field {unknown[0]!r}" if unknown else f"missing {missing[0]!r}"))
        if "targets" in d:
            d["targets"] = tuple(d["targets"])
        if d.get("layers") is not None:
            d["layers"] = tuple(d["layers"])
        return cls(**d)


class Adapter:
    """An adapter's config and tensors (fp32, our key names). Immutable by convention: the address
    is computed once."""

    def __init__(self, config: AdapterConfig, tensors: dict[str, torch.Tensor]):
        self.config = config
        self.tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sorted(tensors.items())}

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def to_bytes(self) -> bytes:
        """The single-file form: safetensors with the config (canonical JSON) in its header."""
        meta = {METADATA_KEY: json.dumps(self.config.to_dict(), sort_keys=True, separators=(",", ":"))}
        return save_safetensors(self.tensors, metadata=meta)

    def save(self, folder: str | Path) -> Path:
        """Write the folder form; its weights file is the single-file form."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        (folder / WEIGHTS_NAME).write_bytes(self.to_bytes())
        return folder

    @classmethod
    def load(cls, source: bytes | str | Path, *, base_fingerprint: str | None = None,
             stage: str | None = None) -> "Adapter":
        """Read a folder, a .safetensors file or its bytes. An adapter trained elsewhere (a peft
        folder, or a bare safetensors file) carries no fingerprint: name the DiT it was trained on
        with base_fingerprint and stage. Raises AdapterError naming the key or field and why."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            data, config_json = bytes(source), None
        else:
            path = Path(source)
            if path.is_dir():
                if not (path / WEIGHTS_NAME).is_file():
                    raise AdapterError(f"{path}: no {WEIGHTS_NAME}")
                data = (path / WEIGHTS_NAME).read_bytes()
                config = path / CONFIG_NAME
                config_json = _json_object(config.read_text(), CONFIG_NAME) if config.is_file() else None
            elif path.is_file():
                data, config_json = path.read_bytes(), None
            else:
                raise AdapterError(f"{path}: no such adapter file or folder")
        raw, header = _read_safetensors(data)
        if config_json is None and METADATA_KEY in header:
            config_json = _json_object(header[METADATA_KEY], f"header {METADATA_KEY}")
        tensors, alphas = _canonical_tensors(raw)
        if config_json is not None and config_json.get("format") == FORMAT:
            if base_fingerprint is not None or stage is not None:
                raise AdapterError("this adapter has a Horse config: base_fingerprint and stage are read from it")
            if alphas:
                raise AdapterError(f"{next(iter(alphas))}.alpha: per-module alpha is not part of the Horse format")
            return cls(AdapterConfig.from_dict(config_json), tensors)
        return cls(_foreign_config(tensors, alphas, config_json, base_fingerprint, stage), tensors)


def _read_safetensors(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of safetensors bytes (the only weight format we read)."""
    try:
        n = int.from_bytes(data[:8], "little")
        if len(data) < 8 + n:
            raise ValueError("truncated header")
        metadata = json.loads(data[8:8 + n]).get("__metadata__") or {}
        return load_safetensors(data), metadata
    except Exception as e:           # safetensors raises its own error types on corrupt input
        raise AdapterError(f"not a safetensors file ({type(e).__name__}: {e})") from None


def _json_object(text: str, where: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise AdapterError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise AdapterError(f"{where}: not a JSON object")
    return value


def _canonical_tensors(raw: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Map foreign key names to ours: `<module>.lora_A.weight` / `.lora_B.weight`; per-module
    kohya alphas are returned apart, keyed by module."""
    tensors: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    for key, t in raw.items():
        name = key
        for wrapper in _WRAPPERS:
            name = name.replace(wrapper, "")
        root = _ROOT.search(name)
        name = name[root.end():] if root else name
        if (m := _ALPHA_KEY.fullmatch(name)) and t.numel() == 1:
            alphas[m["module"]] = float(t)
            continue
        m = _LORA_KEY.fullmatch(name)
        if m is None or not root:
            raise AdapterError(f"{key}: not a LoRA tensor of this DiT (expected <module>.lora_A.weight or .lora_B.weight)")
        if t.ndim != 2 or not t.is_floating_point():
            raise AdapterError(f"{key}: expected a 2-d float tensor, got {t.dtype} {list(t.shape)}")
        ours = f"{m['module']}.{_KIND[m['kind']]}.weight"
        if ours in tensors:
            raise AdapterError(f"{key}: a second tensor for {ours}")
        tensors[ours] = t
    if not tensors:
        raise AdapterError("no LoRA tensors in the adapter")
    return tensors, alphas


def _foreign_config(tensors: dict[str, torch.Tensor], alphas: dict[str, float], peft: dict | None,
                    base_fingerprint: str | None, stage: str | None) -> AdapterConfig:
    """The config of an adapter trained elsewhere: rank from B's shape, alpha from the peft config,
    kohya alphas (folded into B when they differ per module) or the rank; targets and layers from
    the keys. Changes `tensors` in place when folding alphas."""
    if peft is not None and peft.get("peft_type") != "LORA":
        raise AdapterError(f"{CONFIG_NAME}: neither a Horse ({FORMAT}) nor a peft LoRA config")
    if peft is not None and (peft.get("use_dora") or peft.get("lora_bias")):
        raise AdapterError(f"{CONFIG_NAME}: DoRA and LoRA biases are not supported")
    if base_fingerprint is None or stage is None:
        raise AdapterError("this adapter has no Horse config: pass base_fingerprint= and stage= "
                           "(the DiT it was trained on)")
    ranks = {t.shape[1] for k, t in tensors.items() if k.endswith(".lora_B.weight")}
    if len(ranks) != 1:
        raise AdapterError(f"one rank per adapter: lora_B ranks are {sorted(ranks) or 'missing'}")
    rank = ranks.pop()
    if peft is not None:
        alpha = float(peft.get("lora_alpha", rank))
        alpha = alpha * math.sqrt(rank) if peft.get("use_rslora") else alpha
    else:
        alpha = float(next(iter(alphas.values()), rank))
    for module, a in alphas.items():
        key = f"{module}.lora_B.weight"
        if key not in tensors:
            raise AdapterError(f"{module}.alpha: no {key} beside it")
        tensors[key] = tensors[key] * (a / alpha)
    targets, layers = set(), set()
    for module in {k.rsplit(".lora_", 1)[0] for k in tensors}:
        if m := _BLOCK_MODULE.fullmatch(module):
            layers.add(int(m[1]))
            targets.add(m[2])
        else:
            targets.add(module.rsplit(".", 1)[-1])
    return AdapterConfig(rank, alpha, stage, base_fingerprint, tuple(sorted(targets)),
                         tuple(sorted(layers)) if layers else None)


def base_state_dict(dit: DiT) -> dict[str, torch.Tensor]:
    """The DiT's own weights under their checkpoint keys, without the adapters it holds (peft keeps
    a wrapped linear's weight under `<module>.base_layer.weight` beside its `lora_*` tensors)."""
    return {k.replace(".base_layer.", "."): v for k, v in dit.state_dict().items() if ".lora_" not in k}


def linear_shape(dit: DiT, name: str) -> tuple[int, int, int]:
    """(in, out per expert, experts) of the linear at `name`, seen through any LoRA wrapper."""
    try:
        module = dit.get_submodule(name)
    except AttributeError:
        raise AdapterError(f"{name}: unknown target (no such module in this DiT)") from None
    module = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    if isinstance(module, ExpertLinear):
        return module.weight.shape[1], module.out_features, module.experts
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, 1
    raise AdapterError(f"{name}: unknown target (a {type(module).__name__}, not a linear)")


def tensor_shapes(config: AdapterConfig, dit: DiT) -> dict[str, tuple[int, int]]:
    """Key -> shape of every tensor an adapter with `config` has on `dit`."""
    shapes: dict[str, tuple[int, int]] = {}
    for name in config.module_names(dit.cfg):
        n_in, n_out, experts = linear_shape(dit, name)
        shapes[f"{name}.lora_A.weight"] = (config.rank * experts, n_in)
        shapes[f"{name}.lora_B.weight"] = (n_out * experts, config.rank)
    return shapes


def check_fits(adapter: Adapter, dit: DiT, dit_fingerprint: str) -> None:
    """Refuse, with the key and the reason, an adapter trained on another DiT, or one whose
    tensors are not exactly one (A, B) pair of the right shapes per module its config covers."""
    cfg, sha = adapter.config, adapter.sha256[:12]
    if cfg.base_fingerprint != dit_fingerprint:
        raise AdapterError(f"adapter {sha}: base_fingerprint {cfg.base_fingerprint[:12]} is not this model's "
                           f"{cfg.stage} DiT ({dit_fingerprint[:12]})")
    expected = tensor_shapes(cfg, dit)
    for key, t in adapter.tensors.items():
        if key not in expected:
            linear_shape(dit, key.rsplit(".lora_", 1)[0])        # names a module that does not exist
            raise AdapterError(f"adapter {sha}: {key}: unknown target (not among its config's targets/layers)")
        if tuple(t.shape) != expected[key]:
            raise AdapterError(f"adapter {sha}: {key}: shape {list(t.shape)} does not fit this DiT "
                               f"(expected {list(expected[key])})")
    missing = [k for k in expected if k not in adapter.tensors]
    if missing:
        raise AdapterError(f"adapter {sha}: {missing[0]}: missing (its config covers this module)")
