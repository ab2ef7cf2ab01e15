"""A render's stages and the results kept between them (DESIGN §12 "staged renders").

A render runs base -> [sr] -> decode:
    base    text encoding, [TI2V image / TA2V audio encode], noise, distill or base loop at 256p
    sr      latent super-resolution to 540p or 1080p (only when the request asks for one)
    decode  video + audio VAE decode into the clip
`HappyHorsePipeline.render_until(request, stage)` stops after base or sr and returns a
`StageResult`; `pipe(request, start=result)` (or `render_until(..., start=result)`) goes on from
one. A stage result carries everything the next stage needs — the video latent, the audio latent
the later stages use, and after base the prompt embeddings and the torch.Generator state the SR
noise is drawn from — so a resumed render is bit-identical to a straight one on the same device.
The base stage does not depend on the target resolution: a 256p preview's base result finishes
at 540p or 1080p exactly as a straight render of that size would.

`stage_key_inputs` names every input up to a stage, with the fingerprints of only the stack
stages used (`model.stack.stage_fingerprints`); callers hash it with the render-key rule.

torch-free at import (planning computes stage keys without the model); the bytes functions
import torch when called.
"""
from __future__ import annotations

import hashlib
import json
import reprlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .errors import InvalidRequest, StageResultError
from .geometry import BASE_TIER, SR_STAGE
from .prompt import NEGATIVE_PROMPT
from .request import RenderRequest

if TYPE_CHECKING:
    import torch

BASE, SR, DECODE = "base", "sr", "decode"
STORED_STAGES = (BASE, SR)                  # what a StageResult can hold; decode's result is the Clip
STAGE_RESULT_VERSION = 1                    # bump when a stage's meaning or the byte layout changes: old keys miss
_FORMAT = "horse-stage-result"
# tensor name -> (ndim, dtype stored); base results also carry what the SR stage needs. Text
# embeddings are fp16 values (the encoder casts its output to fp16, as upstream), so they are
# stored as fp16 without loss: a base result is ~40% smaller at full size.
_TENSORS = {BASE: {"video": (5, "float32"), "audio": (3, "float32"), "text": (2, "float16"),
                   "generator_state": (1, "uint8")},
            SR: {"video": (5, "float32"), "audio": (3, "float32")}}


def render_stages(request: RenderRequest) -> tuple[str, ...]:
    """The stages a request runs, in order: base, sr (540p/1080p only), decode."""
    return (BASE, SR, DECODE) if request.resolution in SR_STAGE else (BASE, DECODE)


def stack_stages_used(request: RenderRequest, stage: str) -> tuple[str, ...]:
    """The stack stages (`model.stack` names) whose weights or config a result up to `stage` depends
    on: the base/distill DiT, text encoder, tokenizer and pipeline config; a VAE only where an input
    was encoded with it; the SR DiT from sr on; both VAEs at decode."""
    used = [request.profile, "text_encoder", "tokenizer", "pipeline"]
    if request.image is not None:
        used.append("video_vae")              # the base stage encodes the image (and sr again, larger)
    if request.audio is not None:
        used.append("audio_vae")
    if stage != BASE and request.resolution in SR_STAGE:
        used.append(SR_STAGE[request.resolution])
    if stage == DECODE:
        used += ["video_vae", "audio_vae"]
    return tuple(dict.fromkeys(used))


def array_sha256(a: np.ndarray) -> str:
    """Identity of an input array as the model sees it: dtype, shape and bytes."""
    h = hashlib.sha256(f"{a.dtype.str}{list(a.shape)}".encode())
    h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def adapter_key_input(adapter_sha256: str | None, adapter_strength: float = 1.0) -> dict | None:
    """How a brand adapter enters a stage key or a render key: its sha256 (`Adapter.sha256`, the
    address of its catalog blob) and its strength; None without one, so that keys of renders
    without an adapter stay what they were before adapters existed."""
    if adapter_sha256 is None:
        return None
    if not isinstance(adapter_sha256, str) or len(adapter_sha256) != 64 \
            or any(c not in "0123456789abcdef" for c in adapter_sha256):
        raise InvalidRequest(f"adapter sha256 must be 64 lowercase hex digits, got {adapter_sha256!r}")
    if isinstance(adapter_strength, bool) or not isinstance(adapter_strength, (int, float)) \
            or not np.isfinite(adapter_strength):
        raise InvalidRequest(f"adapter_strength must be a finite number, got {adapter_strength!r}")
    return {"sha256": adapter_sha256, "strength": float(adapter_strength)}


def stage_key_inputs(request: RenderRequest, stage: str, stage_fingerprints: Mapping[str, str],
                     adapter_sha256: str | None = None, adapter_strength: float = 1.0) -> dict:
    """Every input that changes a render's result up to and including `stage`, as plain JSON
    values: hash it with `catalog.render_key` to get the stage key. `stage_fingerprints` is
    `pipe.stage_fingerprints` or `describe_checkpoint(...)/describe_tiny(...).stage_fingerprints`
    (the same values). The base stage is the same for every target resolution. A brand adapter
    (its sha256 and strength) changes the base stage and, through it, every later one."""
    if stage not in render_stages(request):
        raise InvalidRequest(f"a {request.resolution} render has no {stage!r} stage (it has {render_stages(request)})")
    fingerprints = {}
    for used in stack_stages_used(request, stage):
        if used in stage_fingerprints:
            fingerprints[used] = stage_fingerprints[used]
        elif used != "tokenizer":             # a stack without tokenizer/ reads it from text_encoder/
            raise InvalidRequest(f"the model has no {used!r} stage fingerprint (has {sorted(stage_fingerprints)})")
    audio = request.audio is not None
    adapter = adapter_key_input(adapter_sha256, adapter_strength)
    return {
        **({"adapter": adapter} if adapter is not None else {}),
        "stage": stage,
        "stage_result_version": STAGE_RESULT_VERSION,
        "prompt": request.prompt,
        # only the base profile uses a negative prompt (CFG); None there means the built-in one
        "negative_prompt": (NEGATIVE_PROMPT if request.negative_prompt is None else request.negative_prompt)
        if request.profile == "base" else None,
        "profile": request.profile,
        "resolution": BASE_TIER if stage == BASE else request.resolution,
        "aspect_ratio": request.aspect_ratio,
        "seconds": float(request.seconds),
        "seed": int(request.seed),
        "image_sha256": array_sha256(request.image) if request.image is not None else None,
        "audio_sha256": array_sha256(request.audio) if audio else None,
        "audio_sample_rate": request.audio_sample_rate if audio else None,
        "keep_audio_fixed": bool(request.keep_audio_fixed),
        "fingerprints": fingerprints,
    }


@dataclass
class StageResult:
    """The state between two stages. Tensors may live on the device that made them; `to_bytes`
    moves them to the CPU. `timings` and `stages_run` describe the call that returned this object
    (as on `Clip`) and are not stored."""
    stage: str                                  # BASE or SR: the last stage this result includes
    key_inputs: dict                            # stage_key_inputs(request, stage, fingerprints) it was made from
    video: torch.Tensor                         # (1, z, T, h, w) float32 latent at the stage's resolution
    audio: torch.Tensor                         # (1, Ta, C) float32: the audio latent sr and decode use
    text: torch.Tensor | None = None            # (N, C_text) prompt embeddings (base results: sr reuses them)
    generator_state: torch.Tensor | None = None  # uint8 torch.Generator state after the stage (base results)
    device_type: str = "cpu"                    # the generator's device type: its state only restores there
    timings: dict[str, float] = field(default_factory=dict)
    stages_run: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        """safetensors bytes: the tensors (on the CPU) and string metadata; never pickle."""
        import torch
        from safetensors.torch import save

        tensors = {name: getattr(self, name).detach().to("cpu", getattr(torch, dtype)).contiguous()
                   for name, (_, dtype) in _TENSORS[self.stage].items()}
        return save(tensors, metadata={"format": _FORMAT, "version": str(STAGE_RESULT_VERSION), "stage": self.stage,
                                       "device_type": self.device_type,
                                       "key_inputs": json.dumps(self.key_inputs, sort_keys=True)})

    @classmethod
    def from_bytes(cls, data: bytes) -> "StageResult":
        """Parse and check the layout (format, version, stage, tensor names, dtypes and shapes);
        whether it fits a request and a model is checked when a render starts from it."""
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load

        meta = _metadata(data)
        stage = meta.get("stage")
        if meta.get("format") != _FORMAT:
            raise StageResultError("not a Horse stage result (no 'format: horse-stage-result' in its metadata)")
        if meta.get("version") != str(STAGE_RESULT_VERSION):
            raise StageResultError(f"stage result version {meta.get('version')!r}; "
                                   f"this code reads {STAGE_RESULT_VERSION}")
        if stage not in STORED_STAGES:
            raise StageResultError(f"stage result: stage {stage!r} is not one of {STORED_STAGES}")
        try:
            key_inputs = json.loads(meta.get("key_inputs", ""))
        except ValueError as e:
            raise StageResultError(f"stage result: key_inputs is not JSON ({e})") from None
        if not isinstance(key_inputs, dict) or key_inputs.get("stage") != stage:
            raise StageResultError(f"stage result: key_inputs do not describe a {stage!r} stage")
        try:
            tensors = load(bytes(data))
        except SafetensorError as e:
            raise StageResultError(f"{stage} stage result: unreadable tensors ({e})") from None
        expected = _TENSORS[stage]
        if set(tensors) != set(expected):
            raise StageResultError(f"{stage} stage result holds tensors {sorted(tensors)}, expected {sorted(expected)}")
        for name, (ndim, dtype) in expected.items():
            if tensors[name].dtype != getattr(torch, dtype) or tensors[name].ndim != ndim:
                raise StageResultError(f"{stage} stage result: {name} is {tensors[name].dtype} with shape "
                                       f"{list(tensors[name].shape)}, expected torch.{dtype} with {ndim} dims")
        if "text" in tensors:
            tensors["text"] = tensors["text"].float()
        video, audio = tensors["video"], tensors["audio"]
        if video.shape[0] != 1 or audio.shape[0] != 1 or video.shape[2] != (audio.shape[1] - 1) // 4 + 1:
            raise StageResultError(f"{stage} stage result: video latent {list(video.shape)} and audio latent "
                                   f"{list(audio.shape)} do not belong to one clip")
        return cls(stage, key_inputs, device_type=meta.get("device_type", ""), **tensors)


def _metadata(data: bytes) -> dict[str, str]:
    """The string metadata of safetensors bytes (an 8-byte little-endian header length, then a JSON
    header whose "__metadata__" holds it); safetensors' Python API reads it only from files."""
    try:
        (n,) = struct.unpack("<Q", bytes(data[:8]))
        header = json.loads(bytes(data[8:8 + n]))
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict):
            raise ValueError("__metadata__ is not a mapping")
        return meta
    except (struct.error, ValueError, AttributeError) as e:
        raise StageResultError(f"not a Horse stage result: not safetensors bytes ({e})") from None


def check_fits(result: StageResult, request: RenderRequest, stage_fingerprints: Mapping[str, str],
               device_type: str, adapter_sha256: str | None = None, adapter_strength: float = 1.0) -> None:
    """Raise StageResultError unless `result` can start `request` (with that adapter) on a model
    with these stage fingerprints and device type, naming what differs: another model (which
    stack stages' fingerprints), another request or adapter (which fields), or another device
    type (a generator state restores only on its own)."""
    if not isinstance(result, StageResult):
        raise StageResultError(f"start must be a StageResult, got {type(result).__name__}")
    if result.stage not in STORED_STAGES or result.stage not in render_stages(request):
        raise StageResultError(f"a {result.stage!r} stage result cannot start a {request.resolution} render")
    expected = stage_key_inputs(request, result.stage, stage_fingerprints, adapter_sha256, adapter_strength)
    got = result.key_inputs
    where = f"the {result.stage} stage result"
    theirs, ours = got.get("fingerprints") or {}, expected["fingerprints"]
    if theirs != ours:
        differ = [s for s in sorted(set(theirs) | set(ours)) if theirs.get(s) != ours.get(s)]
        detail = ", ".join(f"{s} ({str(theirs.get(s))[:12]} there, {str(ours.get(s))[:12]} here)" for s in differ)
        raise StageResultError(f"{where} was made with another model: stage fingerprint(s) differ: {detail}")
    fields = [k for k in sorted(set(got) | set(expected)) if k != "fingerprints" and got.get(k) != expected.get(k)]
    if fields:
        detail = "; ".join(f"{k} is {reprlib.repr(got.get(k))} there, {reprlib.repr(expected.get(k))} here"
                           for k in fields)
        raise StageResultError(f"{where} was made for another request: {detail}")
    if result.device_type != device_type:
        raise StageResultError(f"{where} was made on {result.device_type or 'an unknown device'}; this pipeline "
                               f"runs on {device_type} (a generator state restores only on its own device type)")
