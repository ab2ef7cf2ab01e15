"""Stage offload: whole stages (DiTs, text encoder, VAEs) live on the CPU and move to the device
when used, and stay there, least recently used first out, while the resident set fits a budget.

Why not accelerate's/diffusers' hooks: they move far more bytes. Model-level offload
(`cpu_offload_with_hook` chained, diffusers' `enable_model_cpu_offload`) keeps one model on the
device at a time, so every clip moves the whole stack in and out again; sequential offload
streams the weights in on every forward. `benchmarks/model_offload.py` replays the stage uses of
real renders (8 distilled 256p clips, then one 540p SR clip) with the full-size stage bytes
(text encoder 18.5 GB, each DiT 30.6 GB, VAEs 3.4 GB) on an 80 GiB GPU, 70% budget:

    policy               GB per distill clip  whole sequence   at 25 GB/s (PCIe 4.0 x16)
    stage LRU (ours)     0 (52.6 the first)   139 GB             5.6 s
    model offload        105                  1008 GB           40.3 s (4.2 s per clip)
    sequential offload   267                  2557 GB          102.3 s

That is 4.2 s of copies per clip against the published 2.0 s for the whole 5 s 256p clip on one
H100 (1.6 s for its 8 DiT forwards). The hooks' per-call cost does not decide it (CPU, stage
already on the device: ours 4.7 us, accelerate's 46 us, against ~0.2 s per full-size forward).
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _move(module: torch.nn.Module, device: torch.device) -> None:
    module.to(device)


class StageOffload:
    """LRU residency of whole stages on `device` under `budget_bytes`.

    `size_of` and `move` default to a module's tensor bytes and `module.to`; the offload
    benchmark replays a render's stage sequence with full-size byte counts through them."""

    def __init__(self, device: torch.device, budget_bytes: int,
                 size_of: Callable[[object], int] = module_bytes,
                 move: Callable[[object, torch.device], None] = _move):
        self.device = torch.device(device)
        self.budget_bytes = budget_bytes
        self.size_of, self.move = size_of, move
        self.resident: list = []                 # on the device, least recently used first

    @contextlib.contextmanager
    def use(self, *stages):
        """Inside the block `stages` are on the device: bring each in, first evicting least
        recently used idle stages to the CPU until the resident set fits the budget (a stage
        larger than the budget still comes in: rendering needs it)."""
        for stage in stages:
            if stage in self.resident:
                self.resident.remove(stage)
                self.resident.append(stage)
                continue
            need = self.size_of(stage)
            evicted = False
            while self.resident and sum(map(self.size_of, self.resident)) + need > self.budget_bytes:
                idle = next((r for r in self.resident if r not in stages), None)
                if idle is None:
                    break
                self.move(idle, torch.device("cpu"))
                self.resident.remove(idle)
                evicted = True
            if evicted and self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.move(stage, self.device)
            self.resident.append(stage)
        yield
