"""Checkpoint files: the DiT folder format, strict validation, pickle refusal, sha256 digests.

Released layout of one DiT folder (base/, distill/, 540p_sr/, 1080p_sr/):
    model.safetensors.index.json   {"metadata": {"total_size": ...}, "weight_map": {key: shard}}
    model-00001-of-0000N.safetensors ...
or a single model.safetensors. Keys mirror our module tree (331 tensors at full size), no renaming.
Pickle files (*.bin/*.pt/*.pth/*.ckpt) can run code when loaded: a stage folder holding any is
refused unless the caller opts in with allow_pickle.

Listing, validating (from safetensors headers) and hashing need no torch, so that planning can
describe a stack without loading it; the functions that move tensors import torch when called.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import safe_open

from .errors import CheckpointError

if TYPE_CHECKING:
    import torch

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

_CACHE_MIN_BYTES = 64 << 20


def _hash_cache_path() -> Path:
    return Path(os.environ.get("HORSE_HASH_CACHE", Path.home() / ".cache" / "horse" / "sha256.json"))


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file. A released stack is ~150 GB, minutes to hash, and both the planner and
    every actor need its fingerprint: digests of large files are remembered per machine, keyed
    by (real path, size, mtime), so a changed file is always hashed again."""
    path = Path(path)
    stat = path.stat()
    cache_key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache: dict[str, str] = {}
    if stat.st_size >= _CACHE_MIN_BYTES:
        try:
            cache = json.loads(_hash_cache_path().read_text())
            if cache_key in cache:
                return cache[cache_key]
        except (OSError, ValueError):
            cache = {}
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if stat.st_size >= _CACHE_MIN_BYTES:
        cache[cache_key] = digest
        target = _hash_cache_path()
        try:  # atomic replace: concurrent writers can only lose an entry, never corrupt the file
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache))
            tmp.replace(target)
        except OSError:
            pass
    return digest


def fingerprint_files(root: str | os.PathLike, files: list[Path]) -> tuple[str, dict[str, str]]:
    """sha256 of every file (relative path -> hex) and one digest over the sorted list."""
    root = Path(root)
    per_file = {str(Path(f).relative_to(root)).replace(os.sep, "/"): sha256_file(f) for f in files}
    h = hashlib.sha256()
    for name in sorted(per_file):
        h.update(f"{name}\0{per_file[name]}\n".encode())
    return h.hexdigest(), per_file


def save_sharded(state: dict[str, torch.Tensor], folder: str | os.PathLike, max_shard_bytes: int = 5 << 30) -> list[Path]:
    """Write state as model-0000i-of-0000N.safetensors + index (in key order, greedy shards)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = t.detach().contiguous().cpu()
        size += nbytes
    n = len(shards)
    weight_map, files = {}, []
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        files.append(folder / name)
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return files + [folder / INDEX_NAME]


def refuse_pickle(folder: str | os.PathLike, allow_pickle: bool = False) -> None:
    """Raise CheckpointError naming the folder and file if a stage folder holds any pickle file
    and the caller did not opt in. Called for every folder a stack loads from."""
    if allow_pickle:
        return
    folder = Path(folder)
    pickles = sorted(p for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if pickles:
        raise CheckpointError(f"{folder} holds pickle weights ({pickles[0].relative_to(folder)}); pickle files "
                              f"can run code when loaded and are refused unless allow_pickle=True")


def weight_files(folder: str | os.PathLike, allow_pickle: bool = False) -> dict[str, Path]:
    """key -> file holding it, from the index, a single file, or (opt-in) a pickle."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    refuse_pickle(folder, allow_pickle)
    index = folder / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        missing = sorted({f for f in weight_map.values() if not (folder / f).exists()})
        if missing:
            raise CheckpointError(f"{folder}: shard file(s) listed in {INDEX_NAME} are missing: {', '.join(missing)}")
        return {k: folder / f for k, f in weight_map.items()}
    if (folder / SINGLE_NAME).exists():
        with safe_open(str(folder / SINGLE_NAME), "numpy") as f:      # headers only: no torch needed
            return {k: folder / SINGLE_NAME for k in f.keys()}
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:                     # refuse_pickle let them through: the caller opted in
        return {k: pickles[0] for k in _load_pickle(pickles[0])}
    raise CheckpointError(f"{folder}: no {INDEX_NAME}, {SINGLE_NAME} or weight files found")


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    import torch

    obj = torch.load(str(path), map_location="cpu", weights_only=False)  # caller opted in (allow_pickle)
    for key in ("ema_state_dict", "state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _shape_of(path: Path, key: str, cache: dict) -> tuple[int, ...]:
    if path.suffix == ".safetensors":
        with safe_open(str(path), "numpy") as f:
            return tuple(f.get_slice(key).get_shape())
    if path not in cache:
        cache[path] = _load_pickle(path)
    return tuple(cache[path][key].shape)


def validate(folder: str | os.PathLike, expected: dict[str, tuple[int, ...]], allow_pickle: bool = False) -> dict[str, Path]:
    """Exact key-set equality and per-key shapes, checked from headers only (no tensor reads).
    The message names the first offending keys and their files."""
    files = weight_files(folder, allow_pickle)
    missing = [k for k in expected if k not in files]
    unexpected = sorted(k for k in files if k not in expected)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): " + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): " +
                        ", ".join(f"{k} (in {files[k].name})" for k in unexpected[:8]))
    cache: dict = {}
    for k, shape in expected.items():
        if k in files:
            got = _shape_of(files[k], k, cache)
            if got != tuple(shape):
                problems.append(f"tensor {k} in {files[k].name} has shape {list(got)}, expected {list(shape)}")
    if problems:
        raise CheckpointError(f"checkpoint {folder} does not match the model: " + "; ".join(problems))
    return files


def load_into(model: torch.nn.Module, folder: str | os.PathLike, allow_pickle: bool = False) -> list[Path]:
    """Validate, then copy every tensor into `model` (cast to each parameter's dtype; params
    and buffers must already be allocated on the target device). Returns the files read."""
    import torch

    targets = dict(model.named_parameters())
    targets.update(dict(model.named_buffers()))
    files = validate(folder, {k: tuple(v.shape) for k, v in targets.items()}, allow_pickle)
    by_file: dict[Path, list[str]] = {}
    for k, p in files.items():
        by_file.setdefault(p, []).append(k)
    with torch.no_grad():
        for path, keys in by_file.items():
            if path.suffix == ".safetensors":
                with safe_open(str(path), "pt") as f:
                    for k in keys:
                        targets[k].copy_(f.get_tensor(k).to(targets[k].dtype))
            else:
                state = _load_pickle(path)
                for k in keys:
                    targets[k].copy_(state[k].to(targets[k].dtype))
    return sorted(by_file)
