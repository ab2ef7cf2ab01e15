"""Checkpoint files: the DiT folder format, strict validation, pickle refusal, sha256 digests.

Released layout of one DiT folder (base/, distill/, 540p_sr/, 1080p_sr/):
    model.safetensors.index.json   {"metadata": {"total_size": ...}, "weight_map": {key: shard}}
    model-00001-of-0000N.safetensors ...
or a single model.safetensors. Keys mirror our module tree (331 tensors at full size), no renaming.
Pickle files (*.bin/*.pt/*.pth/*.ckpt) can run code when loaded: a stage folder holding any is
refused unless the caller opts in with allow_pickle.

Listing, validating (from safetensors headers) and hashing need no torch, so that planning can
describe a stack without loading it; the functions that move tensors import torch when called.

Loading runs at disk speed (benchmarks/load.py): each shard is read once, front to back, straight
into the memory of the tensors it holds (a safetensors file is an 8-byte header length, a JSON
header of dtype/shape/byte offsets, then the raw tensor bytes), and its sha256 is computed from
the same bytes as they pass, unless the per-machine digest cache already knows the file. Shards
are read in parallel threads (file reads and hashing release the GIL).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, NamedTuple

from .errors import CheckpointError

if TYPE_CHECKING:
    import torch

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

_CACHE_MIN_BYTES = 64 << 20
_CACHE_LOCK = threading.Lock()       # shards are hashed in parallel threads: one writer at a time
# bytes per read() call: few calls, so that a reader thread seldom waits for the GIL (held by a
# thread building the library stages meanwhile) between them
_READ_CHUNK = 64 << 20
# safetensors dtype names (the header's "dtype") -> torch dtype names
_DTYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64",
           "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
           "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def _hash_cache_path() -> Path:
    return Path(os.environ.get("HORSE_HASH_CACHE", Path.home() / ".cache" / "horse" / "sha256.json"))


def _digest_cache_key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _read_digest_cache() -> dict[str, str]:
    try:
        return json.loads(_hash_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def cached_sha256(path: str | os.PathLike) -> str | None:
    """The remembered sha256 of a large file, if it has not changed since (see `sha256_file`)."""
    path = Path(path)
    if path.stat().st_size < _CACHE_MIN_BYTES:
        return None
    return _read_digest_cache().get(_digest_cache_key(path))


def remember_sha256(path: str | os.PathLike, cache_key: str, digest: str) -> None:
    """Remember `digest` for a large file if it is still the file `cache_key` (taken before it was
    read) describes: a file changed while it was being hashed is not remembered."""
    path = Path(path)
    if path.stat().st_size < _CACHE_MIN_BYTES or _digest_cache_key(path) != cache_key:
        return
    with _CACHE_LOCK:
        cache = _read_digest_cache()
        cache[cache_key] = digest
        target = _hash_cache_path()
        try:  # atomic replace: other processes can only lose an entry, never corrupt the file
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache))
            tmp.replace(target)
        except OSError:
            pass


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file. A released stack is ~150 GB, minutes to hash, and both the planner and
    every actor need its fingerprint: digests of large files are remembered per machine, keyed
    by (real path, size, mtime), so a changed file is always hashed again."""
    path = Path(path)
    cache_key = _digest_cache_key(path)
    digest = cached_sha256(path)
    if digest is None:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        remember_sha256(path, cache_key, digest)
    return digest


def fingerprint_files(root: str | os.PathLike, files: list[Path],
                      known: Mapping[Path, str] | None = None) -> tuple[str, dict[str, str]]:
    """sha256 of every file (relative path -> hex) and one digest over the sorted list. `known`:
    digests already computed (by `load_into`, while reading), by path."""
    root = Path(root)
    known = known or {}
    per_file = {str(Path(f).relative_to(root)).replace(os.sep, "/"): known.get(Path(f)) or sha256_file(f) for f in files}
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
        return {k: folder / SINGLE_NAME for k in read_header(folder / SINGLE_NAME)}
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


class TensorEntry(NamedTuple):
    """One tensor of a safetensors file as its header describes it; offsets are from the file start."""
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def read_header(path: str | os.PathLike) -> dict[str, TensorEntry]:
    """The tensors of a safetensors file, from its header only; a file that is not one, or whose
    header points past its end (truncated), is refused naming the file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or not 2 <= n <= size - 8:
            raise CheckpointError(f"{path}: not a safetensors file (header length {n}, file size {size})")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CheckpointError(f"{path}: unreadable safetensors header ({e})") from None
    entries = {}
    for key, d in header.items():
        if key == "__metadata__":
            continue
        try:
            start, end = (8 + n + int(o) for o in d["data_offsets"])
            entries[key] = TensorEntry(str(d["dtype"]), tuple(int(x) for x in d["shape"]), start, end)
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: header entry for {key!r} is malformed") from None
        if not 8 + n <= start <= end <= size:
            raise CheckpointError(f"{path}: tensor {key} lies outside the file (bytes {start}-{end} of {size}; truncated?)")
    return entries


def _shape_of(path: Path, key: str, cache: dict) -> tuple[int, ...]:
    if path not in cache:
        cache[path] = read_header(path) if path.suffix == ".safetensors" else _load_pickle(path)
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


def read_weights(model: torch.nn.Module, folder: str | os.PathLike, allow_pickle: bool = False,
                 device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[Path, str]]:
    """Validate, then read every tensor `model` has (names, shapes and dtypes only: a model on the
    meta device will do) from `folder`, on `device` in each one's dtype. Returns the tensors and
    the sha256 of each safetensors file read, computed from the same bytes. Builds and changes no
    module, so it may run while another thread builds a library model (see `model.loading.load_stack`)."""
    targets = dict(model.named_parameters())
    targets.update(dict(model.named_buffers()))
    files = validate(folder, {k: tuple(v.shape) for k, v in targets.items()}, allow_pickle)
    by_file: dict[Path, list[str]] = {}
    for k, p in files.items():
        by_file.setdefault(p, []).append(k)
    want = {k: t.dtype for k, t in targets.items()}
    state: dict[str, torch.Tensor] = {}
    digests: dict[Path, str] = {}

    def read(path: Path) -> None:
        if path.suffix == ".safetensors":
            digests[path] = _read_safetensors(path, want, device, state)
        else:
            pickled = _load_pickle(path)
            state.update({k: pickled[k].to(device, want[k]) for k in by_file[path]})

    with ThreadPoolExecutor(max_workers=max(1, min(len(by_file), os.cpu_count() or 1, 8))) as pool:
        list(pool.map(read, sorted(by_file)))
    return state, digests


def load_into(model: torch.nn.Module, folder: str | os.PathLike, allow_pickle: bool = False,
              device: str | torch.device = "cpu") -> dict[Path, str]:
    """`read_weights`, then make the tensors `model`'s parameters and buffers (replaced, not copied
    into: the model may be on the meta device). Returns the sha256 of each safetensors file read."""
    state, digests = read_weights(model, folder, allow_pickle, device)
    model.load_state_dict(state, strict=True, assign=True)
    return digests


def _read_safetensors(path: Path, want: Mapping[str, torch.dtype], device: str | torch.device,
                      state: dict[str, torch.Tensor]) -> str:
    """Read one file front to back, each tensor straight into its own memory, into `state` (on
    `device`, in `want`'s dtype); every byte passes through sha256 unless the digest cache knows
    the file. Returns its sha256. (Memory from torch.empty, not numpy: numpy asks for huge pages,
    and faulting those in stalled on memory compaction, 4x slower on a busy machine.)"""
    import torch

    entries = read_header(path)
    cache_key = _digest_cache_key(path)
    digest = cached_sha256(path)
    h = hashlib.sha256() if digest is None else None
    with open(path, "rb", buffering=0) as f:
        if hasattr(os, "posix_fadvise"):     # read front to back: a larger readahead
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)

        def fill(buffer: memoryview) -> None:
            while buffer:
                n = f.readinto(buffer[:_READ_CHUNK])
                if not n:
                    raise CheckpointError(f"{path}: file ended early (truncated while reading?)")
                if h is not None:
                    h.update(buffer[:n])
                buffer = buffer[n:]

        position = 0
        for key, e in sorted(entries.items(), key=lambda item: item[1].start):
            if e.start < position:
                raise CheckpointError(f"{path}: tensor {key} overlaps the one before it")
            fill(memoryview(bytearray(e.start - position)))      # the header (and any gap)
            dtype = getattr(torch, _DTYPES.get(e.dtype, ""), None)
            if dtype is None:
                raise CheckpointError(f"{path}: tensor {key} has unsupported dtype {e.dtype}")
            numel = math.prod(e.shape)
            if numel * dtype.itemsize != e.end - e.start:
                raise CheckpointError(f"{path}: tensor {key} holds {e.end - e.start} bytes; its shape "
                                      f"{list(e.shape)} and dtype {e.dtype} need {numel * dtype.itemsize}")
            # device given: a library building meanwhile under a meta-device context must not move it
            tensor = torch.empty(e.shape, dtype=dtype, device="cpu")
            fill(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
            position = e.end
            if key in want:
                state[key] = tensor.to(device, want[key])
        if h is not None:
            fill(memoryview(bytearray(path.stat().st_size - position)))   # anything after the last tensor
            digest = h.hexdigest()
            remember_sha256(path, cache_key, digest)
    return digest
