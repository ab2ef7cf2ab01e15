"""A run's progress: its running totals, the progress artifact in the Prefect UI, and whoever else
listens in this process (the CLI's progress bar).

A flow parameter cannot carry a callback, so a listener is scoped to a block of code instead:

    with progress_listener(bar_update):
        nightly_campaign_render(manifest_uri)   # runs in this thread, so it sees the listener

A sync flow (and each task it calls directly) runs in the calling thread, inside a copy of its
context, so the ContextVar below reaches it; another thread or process never sees it.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from horse_actors import RenderOutcome
from horse_actors.jobs import NOT_ADMITTED

STAGES = ("queue", "text_encode", "denoise", "sr", "decode", "encode", "upload")

Listener = Callable[["RunTotals"], None]
_listener: ContextVar[Listener | None] = ContextVar("horse_progress_listener", default=None)


@contextmanager
def progress_listener(listener: Listener) -> Iterator[None]:
    """Call `listener(totals)` as every run started in this block makes progress."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


@dataclass
class RunTotals:
    planned: int = 0
    cached: int = 0
    rendered: int = 0
    degraded: int = 0  # rendered, but not as requested (an OOM fallback): not cached, counted against the run
    failed: int = 0
    cancelled: int = 0
    not_rendered_budget: int = 0  # never dispatched: a budget was reached (a rerun renders them)
    invalid_rows: int = 0
    kept_approved: int = 0  # approved variants published as they are, not planned (catalog.approvals)
    gpu_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    # per render actor: its latest accelerator use (RenderOutcome.accelerator) and device type
    actors: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, outcome: RenderOutcome) -> None:
        if outcome.ok:
            self.rendered += 1
        elif outcome.status == "degraded":
            self.degraded += 1
        elif outcome.error_class == NOT_ADMITTED:
            self.not_rendered_budget += 1
        elif outcome.status == "cancelled":
            self.cancelled += 1
        else:
            self.failed += 1
        self.gpu_seconds += outcome.duration_s or 0.0
        for stage, seconds in (outcome.timings or {}).items():
            if stage in self.stage_seconds:
                self.stage_seconds[stage] += seconds
        use = outcome.accelerator
        if use and outcome.actor_id:  # the actor's totals so far: the latest one counts
            known = self.actors.get(outcome.actor_id)
            if known is None or use["wall_s"] >= known["wall_s"]:
                self.actors[outcome.actor_id] = {**use, "device_type": outcome.device_type}

    def accelerator(self) -> dict[str, Any] | None:
        """The render actors' model busy and idle shares of their time since each one's first shot
        (None when no local actor rendered: API renders only, or nothing to do)."""
        wall = sum(a["wall_s"] for a in self.actors.values())
        if not wall:
            return None
        busy = sum(a["busy_s"] for a in self.actors.values())
        share = min(1.0, busy / wall)
        return {"actors": len(self.actors), "busy_s": round(busy, 3), "wall_s": round(wall, 3),
                "busy_share": round(share, 4), "idle_share": round(1.0 - share, 4),
                "device_types": sorted({str(a["device_type"]) for a in self.actors.values()}),
                "per_actor_busy_share": sorted(round(min(1.0, a["busy_s"] / a["wall_s"]), 4)
                                               for a in self.actors.values() if a["wall_s"])}

    @property
    def done(self) -> int:
        return self.cached + self.rendered + self.degraded + self.failed + self.cancelled + self.not_rendered_budget

    def as_dict(self) -> dict[str, Any]:
        return {
            "planned": self.planned,
            "cached": self.cached,
            "rendered": self.rendered,
            "degraded": self.degraded,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "not_rendered_budget": self.not_rendered_budget,
            "invalid_rows": self.invalid_rows,
            "kept_approved": self.kept_approved,
            "gpu_seconds": round(self.gpu_seconds, 2),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "accelerator": self.accelerator(),
        }


def accelerator_line(use: dict[str, Any] | None) -> str | None:
    """One sentence on how busy the render actors kept their accelerator, for the summaries."""
    if not use:
        return None
    devices = ", ".join(use["device_types"])
    line = (f"accelerator busy {use['busy_share']:.0%}, idle {use['idle_share']:.0%} "
            f"({devices}; model stages over {use['actors']} actor{'s' if use['actors'] != 1 else ''}' time "
            f"since their first shot")
    if use["actors"] > 1:
        line += ", per actor " + " / ".join(f"{share:.0%}" for share in use["per_actor_busy_share"])
    line += ")"
    if all(d == "cpu" for d in use["device_types"]):
        line += "; on a CPU the model and the clips' CPU tails share the same cores"
    return line


class Progress:
    """Shows a run's totals: to the listener in scope at every update, and as a Prefect progress
    artifact (only inside a flow run; throttled, so a 10k-shot night does not flood the API)."""

    def __init__(self, artifact_key: str | None, description: str, min_interval_s: float = 2.0):
        self.listener = _listener.get()
        self.artifact_key = artifact_key
        self.description = description
        self.min_interval_s = min_interval_s
        self._artifact_id = None
        self._last = 0.0

    def start(self, totals: RunTotals) -> None:
        if self.artifact_key:
            from prefect.artifacts import create_progress_artifact

            self._artifact_id = create_progress_artifact(progress=_percent(totals), key=self.artifact_key,
                                                         description=self.description)
        if self.listener:
            self.listener(totals)

    def update(self, totals: RunTotals, force: bool = False) -> None:
        if self.listener:
            self.listener(totals)
        now = time.monotonic()
        if self._artifact_id is None or (not force and now - self._last < self.min_interval_s):
            return
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(self._artifact_id, _percent(totals))
        self._last = now


def _percent(totals: RunTotals) -> float:
    return round(100.0 * totals.done / max(totals.planned, 1), 1)
