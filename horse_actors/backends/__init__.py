"""Render backends: where a job's clip comes from, behind one job -> outcome contract.

`RenderActor` (local Happy Horse model, one per GPU) is one backend; `ApiBackend` (a provider's
task API: Seedance 2.0 on BytePlus ModelArk, models on fal's queue) is another. Both take a
`RenderJob` and an attempt number and return a `RenderOutcome` whose blob is already in the
catalog, so planning, keys, versions, QC and review do not care where a clip came from.

    from horse_actors.backends import ApiBackend, map_brief, provider_spec
    spec = provider_spec("seedance-2.0")                 # key from $ARK_API_KEY when it renders
    request = map_brief(spec, scene="...", aspect_ratio="4:5", resolution="1080p", seconds=5, seed=7)
    key = catalog.render_key(request.key_inputs())
    outcome = ApiBackend(spec, StoreTarget(store_url)).render(RenderJob(key, request, ...))
"""

from __future__ import annotations

from importlib import import_module
from typing import Protocol

from ..jobs import RenderJob, RenderOutcome

# Names are imported on first use: configuration and planning read `spec` and `request` without
# loading the backend's HTTP and media machinery.
_EXPORTS = {"ApiBackend": "api", "ApiRenderOutcome": "api", "provider_slots": "api", "ProviderError": "http",
            "ApiRequest": "request", "map_brief": "request", "plain_prompt": "request",
            "PRESETS": "spec", "ProviderSpec": "spec", "billed_tokens": "spec", "provider_spec": "spec"}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


class RenderBackend(Protocol):
    """What the pool calls on any backend (RenderActor and ApiBackend both have it)."""

    def render(self, job: RenderJob, attempt: int = 1, submitted_at: float | None = None,
               call_id: str | None = None) -> RenderOutcome: ...

    def finished(self, call_ids: list[str]) -> dict[str, RenderOutcome]: ...

    def stats(self) -> dict: ...


__all__ = ["ApiBackend", "ApiRenderOutcome", "ApiRequest", "PRESETS", "ProviderError", "ProviderSpec",
           "RenderBackend", "billed_tokens", "map_brief", "plain_prompt", "provider_slots", "provider_spec"]
