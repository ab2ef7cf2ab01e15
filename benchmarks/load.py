"""Checkpoint load against a raw read of the same bytes, on a multi-GB stack.

    .venv/bin/python benchmarks/load.py [--gib 2.5] [--repeats 3] [--keep DIR]

The stack is the released layout with random weights: the library stages (text encoder, VAEs,
tokenizer) of the tiny preset and one DiT stage (distill/) with full-width block shapes but fewer
layers, sized to about --gib GiB of bf16 in 512 MiB shards (the full DiT is 30 GB per stage).
`HappyHorsePipeline.from_pretrained` reads every file, checks keys and shapes, and fingerprints
the stack (sha256 of every file); the raw read is `Path.read_bytes()` of the same files, one after
the other. Measured side by side in three states, median of --repeats:
  cold, digests not cached   the first load on a machine: files dropped from the page cache
                             (posix_fadvise DONTNEED, no root needed) and the per-machine digest
                             cache empty, so the fingerprint is computed while loading
  cold, digests cached       files dropped from the page cache, digests known by file identity
  warm, digests cached       the files in the page cache (a reload on the same machine)
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import HappyHorsePipeline  # noqa: E402
from model.checkpoint import save_sharded  # noqa: E402
from model.config import TINY_AUDIO_LATENT, tiny_dit_config  # noqa: E402
from model.loading import meta_dit  # noqa: E402

SHARD_BYTES = 512 << 20


def big_dit_config(gib: float):
    """Full-size head layout (head_dim 128, 8 kv groups) at width 3072, layers added (a sandwich of
    expert layers around shared ones) until the bf16 weights reach `gib` GiB; tiny in/out widths
    so the tiny library stages fit it."""
    base = tiny_dit_config("distill", TINY_AUDIO_LATENT).replace(hidden_size=3072, head_dim=128, num_query_groups=8)
    for layers in range(4, 200, 2):
        quarter = max(1, layers // 4)
        cfg = base.replace(num_layers=layers, mm_layers=(*range(quarter), *range(layers - quarter, layers)),
                           gelu7_layers=tuple(range(quarter)))
        if dit_bytes(cfg) >= gib * 2**30:
            return cfg
    raise ValueError(f"--gib {gib} too large")


def dit_bytes(cfg) -> int:
    dit = meta_dit(cfg, torch.bfloat16)
    return sum(t.numel() * t.element_size() for t in (*dit.parameters(), *dit.buffers()))


def make_stack(folder: Path, gib: float) -> int:
    """Write the stack; returns the DiT's weight bytes."""
    tiny = HappyHorsePipeline.tiny(seed=0)
    tiny.save_pretrained(folder)
    for stage in tiny.dits:
        shutil.rmtree(folder / stage)
    cfg = big_dit_config(gib)
    dit = meta_dit(cfg, torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(t.shape, generator=gen, dtype=torch.float32) * 0.02).to(t.dtype)
             for k, t in (*dit.named_parameters(), *dit.named_buffers())}
    save_sharded(state, folder / "distill", SHARD_BYTES)
    (folder / "distill" / "config.json").write_text(cfg.to_json())
    return sum(t.numel() * t.element_size() for t in state.values())


def files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def drop_from_page_cache(files: list[Path]) -> None:
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_read(files: list[Path]) -> float:
    t0 = time.perf_counter()
    for p in files:
        p.read_bytes()
    return time.perf_counter() - t0


def load(folder: Path) -> float:
    t0 = time.perf_counter()
    pipe = HappyHorsePipeline.from_pretrained(folder)
    seconds = time.perf_counter() - t0
    del pipe
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=2.5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--keep", type=Path, help="build the stack here once and reuse it")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="horse-bench-load-"))
    folder = args.keep or work / "stack"
    try:
        os.environ["HORSE_HASH_CACHE"] = str(work / "digests.json")
        if not (folder / "pipeline.json").exists():
            t0 = time.perf_counter()
            make_stack(folder, args.gib)
            print(f"stack written in {time.perf_counter() - t0:.0f} s")
        files = files_of(folder)
        size = sum(f.stat().st_size for f in files)
        shards = len(list((folder / "distill").glob("*.safetensors")))
        print(f"stack: {size / 2**30:.2f} GiB in {len(files)} files (distill/ in {shards} shards), "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, median of {args.repeats}")
        states = {
            "cold, digests not cached": (True, False),
            "cold, digests cached": (True, True),
            "warm, digests cached": (False, True),
        }
        print(f"{'':28s}{'raw read':>10s}{'load':>10s}{'load GB/s':>11s}{'raw / load':>12s}")
        for name, (cold, cached) in states.items():
            raws, loads = [], []
            for _ in range(args.repeats):
                for run, out in ((lambda: raw_read(files), raws), (lambda: load(folder), loads)):
                    if cold:
                        drop_from_page_cache(files)
                    if not cached:
                        Path(os.environ["HORSE_HASH_CACHE"]).unlink(missing_ok=True)
                    out.append(run())
            raw, loaded = statistics.median(raws), statistics.median(loads)
            print(f"{name:28s}{raw:9.2f}s{loaded:9.2f}s{size / loaded / 1e9:11.2f}{raw / loaded:11.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
