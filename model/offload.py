"""Stage offload: whole stages (DiTs, text encoder, VAEs) live on the CPU and move to the device
when used, and stay there, least recently used first out, while the resident set fits a budget.
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
