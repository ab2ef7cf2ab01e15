"""Adapters on a live DiT, through peft: inject, switch, scale, evict — never touching base weights.

peft does the bookkeeping (`inject_adapter_in_model` wraps the targets; `set_adapter`,
`delete_adapter`, `set_scale` and `enable_adapters` switch between the adapters a DiT holds;
`get_peft_model_state_dict`/`set_peft_model_state_dict` move their tensors). The embedders and
heads are nn.Linear, which peft's own LoRA layer covers. The block linears are our ExpertLinear,
whose forward takes the modality counts and whose sandwich-layer experts each need their own pair,
so `ExpertLoraLinear` is registered through LoraConfig's custom-module hook. Adapters are applied
unmerged: the low-rank term is added beside the base output, so a DiT with no active adapter runs
exactly the base computation and switching is a flag flip, not a weight rewrite.

Imported only when an adapter is used: peft costs ~2 s of import that plain renders do not pay.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict

import torch
import torch.nn.functional as F
from peft import LoraConfig
from peft.functional import delete_adapter, inject_adapter_in_model, set_adapter, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .adapters import Adapter, AdapterConfig, check_fits
from .dit import DiT, ExpertLinear, split_by_modality
from .errors import AdapterError


class ExpertLoraLinear(nn.Module, LoraLayer):
    """peft LoRA layer for ExpertLinear: per expert m, out_m += scaling * B_m A_m x_m on the tokens
    of modality m, computed in fp32 and added after the base output's own rounding. Plain LoRA
    only (no dropout, DoRA, bias or merging)."""

    def __init__(self, base_layer: ExpertLinear, adapter_name: str, config: LoraConfig, r: int = 0,
                 lora_alpha: float = 1, **kwargs):
        super().__init__()
        LoraLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha, config)

    def _get_in_out_features(self, module: ExpertLinear) -> tuple[int, int]:
        return module.weight.shape[1], module.out_features          # out per expert

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config: LoraConfig, **kwargs) -> None:
        if config.use_dora or config.lora_bias or config.lora_dropout:
            raise ValueError("ExpertLoraLinear supports plain LoRA only (no DoRA, bias or dropout)")
        experts, device = self.get_base_layer().experts, self.get_base_layer().weight.device
        self.r[adapter_name], self.lora_alpha[adapter_name] = r, lora_alpha
        self.scaling[adapter_name] = lora_alpha / r
        self.use_rslora[adapter_name], self.lora_bias[adapter_name] = False, False
        self.lora_dropout[adapter_name] = nn.Identity()
        self.lora_A[adapter_name] = nn.Linear(self.in_features, r * experts, bias=False, device=device)
        self.lora_B[adapter_name] = nn.Linear(r, self.out_features * experts, bias=False, device=device)
        self.reset_lora_parameters(adapter_name, config.init_lora_weights)     # A Kaiming, B zero
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def forward(self, x: torch.Tensor, counts: tuple[int, int, int], compute_dtype: torch.dtype) -> torch.Tensor:
        result = self.base_layer(x, counts, compute_dtype)
        active = [] if self.disable_adapters else [a for a in self.active_adapters if a in self.lora_A]
        if not active:
            return result
        experts = self.get_base_layer().experts
        parts = split_by_modality(x, counts) if experts > 1 else [x]
        result = result.float()
        for name in active:
            a = self.lora_A[name].weight.view(experts, self.r[name], -1)
            b = self.lora_B[name].weight.view(experts, self.out_features, -1)
            delta = torch.cat([F.linear(F.linear(p.float(), a[m]), b[m]) for m, p in enumerate(parts)])
            result = result + self.scaling[name] * delta
        return result


def inject(dit: DiT, config: AdapterConfig, name: str, trainable: bool = False) -> None:
    """Wrap the modules `config` covers with a fresh adapter `name` (A Kaiming-initialised from
    torch's RNG, B zero, so it starts as the base model). With `trainable`, its tensors (and only
    they: peft freezes the base) require grad."""
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=config.module_names(dit.cfg),
                      inference_mode=not trainable)
    lora._register_custom_module({ExpertLinear: ExpertLoraLinear})
    with warnings.catch_warnings():      # holding several adapters on one DiT is the point
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        inject_adapter_in_model(lora, dit, adapter_name=name)


def lora_layers(dit: DiT) -> list[LoraLayer]:
    return [m for m in dit.modules() if isinstance(m, LoraLayer)]


class ResidentAdapters:
    """The adapters held on a pipeline's DiTs (at most `capacity`, least recently used out) and the
    switch a render makes: `activate(adapter, strength)`, or `activate(None)` for the base model."""

    def __init__(self, dits: dict[str, DiT], fingerprints: dict[str, str], capacity: int = 4):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.dits, self.fingerprints, self.capacity = dits, fingerprints, capacity
        self._held: OrderedDict[str, tuple[str, str]] = OrderedDict()    # sha256 -> (stage, peft name)
        self._layers: dict[str, list[LoraLayer]] = {}

    @property
    def held(self) -> tuple[str, ...]:
        """sha256 of each adapter held, least recently used first."""
        return tuple(self._held)

    def activate(self, adapter: Adapter | None, strength: float = 1.0) -> None:
        name = self._hold(adapter) if adapter is not None else None
        for stage, layers in self._layers.items():
            on = adapter is not None and stage == adapter.config.stage
            for layer in layers:
                layer.enable_adapters(on)
            if on:
                set_adapter(self.dits[stage], name, inference_mode=True)
                for layer in layers:
                    layer.set_scale(name, strength)

    def _hold(self, adapter: Adapter) -> str:
        sha = adapter.sha256
        if sha in self._held:
            self._held.move_to_end(sha)
            return self._held[sha][1]
        stage = adapter.config.stage
        if stage not in self.dits:
            raise AdapterError(f"adapter {sha[:12]} is for the {stage} DiT, which this pipeline has not loaded")
        dit, name = self.dits[stage], f"adapter_{sha[:16]}"
        check_fits(adapter, dit, self.fingerprints[stage])
        inject(dit, adapter.config, name)
        set_peft_model_state_dict(dit, adapter.tensors, adapter_name=name)     # keys matched by check_fits
        self._held[sha] = (stage, name)
        while len(self._held) > self.capacity:
            _, (old_stage, old_name) = self._held.popitem(last=False)
            delete_adapter(self.dits[old_stage], old_name, prefix="lora_")
            self.dits[old_stage].peft_config.pop(old_name, None)
            self._layers[old_stage] = lora_layers(self.dits[old_stage])
        self._layers[stage] = lora_layers(dit)
        return name
