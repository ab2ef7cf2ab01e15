"""ProviderSpec: how to reach one API provider and what its model can render.

A spec holds no secret, only the *name* of the environment variable with the key, so it can be
logged, hashed into lineage and passed to Ray as an argument; the key is read from the
environment of the process that makes the HTTP call, at the moment it makes it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

KINDS = ("modelark", "fal")


@dataclass(frozen=True)
class ProviderSpec:
    """One provider endpoint and its model. `name` is what routing rules, render keys and
    receipts call it (e.g. "seedance-2.0"); `kind` picks the task API (ModelArk or fal)."""

    name: str
    kind: str
    base_url: str                      # ModelArk: https://ark.ap-southeast.bytepluses.com/api/v3; fal: https://queue.fal.run
    model: str                         # provider model id (fal: the endpoint id)
    api_key_env: str                   # environment variable holding the key (never the key itself)
    image_model: str | None = None     # fal: the endpoint for a first-frame image (image-to-video), if different
    # What the model renders (Seedance 2.0 on ModelArk, from its API reference).
    ratios: tuple[str, ...] = ("16:9", "9:16", "1:1", "4:3", "3:4", "21:9")
    resolutions: tuple[str, ...] = ("480p", "720p", "1080p")
    min_seconds: int = 4
    max_seconds: int = 15
    max_seed: int = 2**31 - 1
    # How hard we may use it.
    max_concurrent: int = 100          # tasks queued or running at once (ModelArk: 120 queued per account)
    poll_initial_s: float = 5.0        # first status poll after create; then x1.5 per poll ...
    poll_max_s: float = 30.0           # ... up to this
    max_wait_s: float = 3600.0         # one render call stops watching after this (the task is resumed next attempt)
    retry_initial_s: float = 1.0       # backoff after a 429/5xx/transport error (Retry-After wins when longer) ...
    retry_max_s: float = 60.0          # ... doubling up to this
    retry_budget_s: float = 900.0      # total wait on one call's 429/5xx before the attempt fails (retryable)
    request_timeout_s: float = 60.0
    max_result_bytes: int = 2 * 1024**3
    callback_url: str | None = None    # sent as ModelArk's callback_url / fal's fal_webhook; polling stays the truth
    price_per_clip: float | None = None          # quote: configured price of one clip (USD)
    price_per_million_tokens: float | None = None  # cost of a delivered clip from its token usage (USD)
    extra: dict = field(default_factory=dict)    # more request fields sent as given (e.g. {"watermark": False})

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"provider {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if not self.api_key_env.isidentifier():
            raise ValueError(f"provider {self.name!r}: api_key_env must name an environment variable "
                             "(the key itself is read from the environment, never configured)")
        check_url(self.base_url, f"provider {self.name!r} base_url")
        if self.callback_url is not None:
            check_callback_url(self.callback_url, f"provider {self.name!r} callback_url")
        if self.max_concurrent < 1 or self.min_seconds < 1 or self.max_seconds < self.min_seconds:
            raise ValueError(f"provider {self.name!r}: max_concurrent >= 1 and 1 <= min_seconds <= max_seconds")
        for ratio in self.ratios:
            ratio_numbers(ratio)

    def model_for(self, has_image: bool) -> str:
        return self.image_model if has_image and self.image_model else self.model


def billed_tokens(usage: dict | None) -> tuple[int | None, int | None]:
    """(tokens the provider reported, tokens estimated where it reported none) of one clip's usage:
    ModelArk bills Seedance by its tokens (`total_tokens`, else `completion_tokens`); for a provider
    that reports none (fal) the backend records `estimated_tokens` by the documented formula. One of
    the two is None."""
    usage = usage or {}
    for name in ("total_tokens", "completion_tokens"):
        if usage.get(name) is not None:
            return int(usage[name]), None
    return None, None if usage.get("estimated_tokens") is None else int(usage["estimated_tokens"])


def ratio_numbers(ratio: str) -> tuple[int, int]:
    """"16:9" -> (16, 9)."""
    try:
        w, h = (int(x) for x in ratio.split(":"))
    except ValueError:
        raise ValueError(f"aspect ratio {ratio!r} is not W:H") from None
    if w < 1 or h < 1:
        raise ValueError(f"aspect ratio {ratio!r} is not W:H")
    return w, h


def is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str) -> None:
    """https, or http to this machine only (the local test servers): a key or a result never
    travels in clear text over a network."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and is_loopback(parts.hostname):
        return
    raise ValueError(f"{what} must be an https URL (http only to 127.0.0.1), got {parts.scheme}://{parts.hostname}")


def check_callback_url(url: str, what: str) -> None:
    """A callback URL goes to the provider in every create request and travels in the spec (Ray
    arguments, logs), so it may carry no credential: no user:password@, no query string or fragment
    (where webhook tokens usually sit). Horse never trusts a callback: it polls with the key."""
    check_url(url, what)
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise ValueError(f"{what} must carry no credential: no user:password@, query string or fragment "
                         f"(got one for {parts.hostname}); authenticate callbacks by the provider's signature or "
                         "by re-reading the task")


SEEDANCE_MODELARK = ProviderSpec(
    name="seedance-2.0", kind="modelark", base_url="https://ark.ap-southeast.bytepluses.com/api/v3",
    model="dreamina-seedance-2-0-260128", api_key_env="ARK_API_KEY", extra={"watermark": False},
)
SEEDANCE_FAL = ProviderSpec(
    name="seedance-2.0-fal", kind="fal", base_url="https://queue.fal.run",
    model="bytedance/seedance-2.0/text-to-video", image_model="bytedance/seedance-2.0/image-to-video",
    api_key_env="FAL_KEY", resolutions=("480p", "720p"), max_concurrent=10,
)
PRESETS = {spec.name: spec for spec in (SEEDANCE_MODELARK, SEEDANCE_FAL)}


def provider_spec(name: str, **overrides) -> ProviderSpec:
    """A preset by name with fields overridden from configuration."""
    if name not in PRESETS:
        raise ValueError(f"unknown provider {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return replace(PRESETS[name], **overrides)
