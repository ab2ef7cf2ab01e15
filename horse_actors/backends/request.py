"""A shot's brief mapped to what one provider's model can render: `ApiRequest`.

The planner maps each API-routed shot once (`map_brief`): the render key hashes
`ApiRequest.key_inputs()` (backend, provider, model and every request field), the plan shows
`adjustments` (where the provider cannot do what the brief asks: nearest ratio, duration,
resolution, seed range) and the job carries the request to the backend, which sends exactly it.

The prompt is plain English, not the Happy Horse training format: closed models are prompted in
prose, and their documented examples quote spoken lines inline ('background voice: "..."').
Dialogue keeps the speaker, the language name and the line verbatim (CJK lines unspaced).
"""

from __future__ import annotations

import base64
import hashlib
import math
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from model.errors import InvalidRequest
from model.prompt import LANGUAGE_LABELS, normalize_language

from .spec import ProviderSpec, ratio_numbers

API_REQUEST_VERSION = 1  # bump when the mapping changes what is sent for the same brief
_TIER_HEIGHTS = {"256p": 256, "480p": 480, "540p": 540, "720p": 720, "1080p": 1080}
_IMAGE_TYPES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"RIFF", "image/webp"))


@dataclass(frozen=True)
class ApiRequest:
    """Exactly what is sent to the provider for one variant (the image as its file bytes)."""

    provider: str
    model: str
    prompt: str
    ratio: str
    resolution: str
    seconds: int
    seed: int
    generate_audio: bool = True
    image: bytes | None = field(default=None, repr=False, compare=False)
    image_sha256: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    # brief value -> sent value, for each field the provider could not take as asked
    adjustments: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False)

    def key_inputs(self) -> dict[str, Any]:
        """What the render key hashes: everything that changes the provider's output."""
        return {
            "backend": "api", "provider": self.provider, "model": self.model, "prompt": self.prompt,
            "ratio": self.ratio, "resolution": self.resolution, "seconds": self.seconds, "seed": self.seed,
            "generate_audio": self.generate_audio, "image_sha256": self.image_sha256,
            "image_role": "first_frame" if self.image else None, "extra": dict(self.extra),
            "api_request_version": API_REQUEST_VERSION,
        }

    def image_data_url(self) -> str | None:
        """The first-frame image inline (both APIs take a base64 data URL where they take a URL)."""
        if self.image is None:
            return None
        return f"data:{image_type(self.image)};base64,{base64.b64encode(self.image).decode()}"


def image_type(data: bytes) -> str:
    for magic, mime in _IMAGE_TYPES:
        if data.startswith(magic):
            return mime
    raise InvalidRequest("reference image must be a PNG, JPEG or WebP file")


def plain_prompt(scene: str, dialogue: Iterable[Mapping[str, str]] = (), background_sound: str | None = None) -> str:
    """The brief as prose: the scene, each spoken line quoted with its speaker and language,
    the background sound."""
    scene = " ".join(unicodedata.normalize("NFC", scene or "").split())
    if not scene:
        raise InvalidRequest("scene must be a non-empty description")
    parts = [scene]
    lines = []
    for i, item in enumerate(dialogue):
        try:
            speaker, line = " ".join(str(item["speaker"]).split()), " ".join(str(item["line"]).split())
            language = LANGUAGE_LABELS[normalize_language(item["language"])]
        except (KeyError, ValueError) as exc:
            raise InvalidRequest(f"dialogue[{i}]: {exc}") from None
        if not speaker or not line:
            raise InvalidRequest(f"dialogue[{i}] needs a speaker and a line")
        lines.append(f'{speaker} says in {language}: "{line}"')
    if lines:
        parts.append("Spoken dialogue, lip-synced, in this order:\n" + "\n".join(lines))
    else:
        parts.append("Nobody speaks.")
    sound = " ".join((background_sound or "").split())
    if sound:
        parts.append(f"Background sound: {sound}")
    return "\n\n".join(parts)


def nearest_ratio(asked: str, supported: Iterable[str]) -> str:
    """The supported ratio closest to `asked` on a log scale (4:5 -> 3:4, 2:1 -> 16:9)."""
    w, h = ratio_numbers(asked)
    return min(supported, key=lambda r: abs(math.log((w / h) / (ratio_numbers(r)[0] / ratio_numbers(r)[1]))))


def nearest_resolution(asked: str, supported: Iterable[str]) -> str:
    """The smallest supported tier at least as tall as `asked`, else the tallest (256p -> 480p)."""
    if asked not in _TIER_HEIGHTS:
        raise InvalidRequest(f"resolution {asked!r} is not one of {', '.join(_TIER_HEIGHTS)}")
    tiers = sorted(supported, key=lambda t: _TIER_HEIGHTS[t])
    return next((t for t in tiers if _TIER_HEIGHTS[t] >= _TIER_HEIGHTS[asked]), tiers[-1])


def map_brief(spec: ProviderSpec, *, scene: str, aspect_ratio: str, resolution: str, seconds: float, seed: int,
              dialogue: Iterable[Mapping[str, str]] = (), background_sound: str | None = None,
              image: bytes | None = None) -> ApiRequest:
    """The provider request for one variant of a brief, with what had to change to fit it."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidRequest(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise InvalidRequest(f"seconds must be a positive number, got {seconds!r}")
    if image is not None:
        image_type(image)
    try:
        ratio = nearest_ratio(aspect_ratio, spec.ratios)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    sent = {
        "aspect_ratio": (aspect_ratio, ratio),
        "resolution": (resolution, nearest_resolution(resolution, spec.resolutions)),
        "seconds": (seconds, min(max(round(seconds), spec.min_seconds), spec.max_seconds)),
        "seed": (seed, seed % (spec.max_seed + 1)),
    }
    adjustments = {name: {"asked": a, "sent": s} for name, (a, s) in sent.items() if a != s}
    return ApiRequest(
        provider=spec.name, model=spec.model_for(image is not None),
        prompt=plain_prompt(scene, dialogue, background_sound), ratio=ratio,
        resolution=sent["resolution"][1], seconds=sent["seconds"][1], seed=sent["seed"][1],
        image=image, image_sha256=hashlib.sha256(image).hexdigest() if image is not None else None,
        extra=dict(spec.extra), adjustments=adjustments,
    )
