"""What a person sees of a run: the progress bar, the failures table, the summary with a contact
sheet. Content is built by plain functions (tested without Prefect); `RunReport` publishes it as
Prefect artifacts, throttling progress updates so a 10k-shot night does not flood the API.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from horse_actors import RenderOutcome

STAGES = ("queue", "text_encode", "denoise", "sr", "decode", "encode", "upload")


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    text = "-".join(parts).lower()
    return "".join(ch if ch.isalnum() and ch.isascii() else "-" for ch in text).strip("-")[:100]


def failure_rows(failures: list[tuple[dict, RenderOutcome]]) -> list[dict[str, Any]]:
    return [
        {
            "shot": entry["shot_id"],
            "variant": entry["variant"],
            "error_class": outcome.error_class or "",
            "message": (outcome.error_message or "")[:300],
            "retryable": bool(outcome.retryable),
            "attempts": outcome.attempt,
            "render_key": outcome.render_key[:12],
        }
        for entry, outcome in failures
    ]


@dataclass
class RunTotals:
    planned: int = 0
    cached: int = 0
    rendered: int = 0
    failed: int = 0
    cancelled: int = 0
    invalid_rows: int = 0
    gpu_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})

    def add(self, outcome: RenderOutcome) -> None:
        if outcome.ok:
            self.rendered += 1
        elif outcome.status == "cancelled":
            self.cancelled += 1
        else:
            self.failed += 1
        self.gpu_seconds += outcome.duration_s or 0.0
        for stage, seconds in (outcome.timings or {}).items():
            if stage in self.stage_seconds:
                self.stage_seconds[stage] += seconds

    @property
    def done(self) -> int:
        return self.cached + self.rendered + self.failed + self.cancelled

    def as_dict(self) -> dict[str, Any]:
        return {
            "planned": self.planned,
            "cached": self.cached,
            "rendered": self.rendered,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "invalid_rows": self.invalid_rows,
            "gpu_seconds": round(self.gpu_seconds, 2),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
        }


def summary_markdown(
    campaign_id: str,
    version: int | None,
    totals: RunTotals,
    store_url: str,
    version_uri: str | None,
    row_errors: list[str],
    sheet_uri: str | None,
    sheet_jpeg: bytes | None,
) -> str:
    lines = [
        f"# {campaign_id}: version {version if version is not None else '(not published)'}",
        "",
        "| planned | already rendered | rendered now | failed | cancelled | invalid rows | GPU-seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {totals.planned} | {totals.cached} | {totals.rendered} | {totals.failed} | {totals.cancelled} "
        f"| {totals.invalid_rows} | {totals.gpu_seconds:.1f} |",
        "",
        "**Time per stage (seconds, all shots):** "
        + ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in totals.stage_seconds.items()),
        "",
        f"- Store: `{store_url}`",
    ]
    if version_uri:
        lines.append(f"- Version manifest: `{version_uri}`")
    if sheet_uri:
        lines.append(f"- Contact sheet: `{sheet_uri}`")
    if row_errors:
        lines += ["", "## Rows skipped", ""] + [f"- {err}" for err in row_errors[:200]]
    if sheet_jpeg:
        # Inline, so the UI shows it without access to the store.
        encoded = base64.b64encode(sheet_jpeg).decode()
        lines += ["", "## Contact sheet", "", f"![contact sheet](data:image/jpeg;base64,{encoded})"]
    return "\n".join(lines)


class RunReport:
    """Publishes the run's artifacts; without a Prefect run context every call is a no-op
    (the same code path then serves scripts and the CLI's own progress bar)."""

    def __init__(self, campaign_id: str, total: int, publish: bool, min_interval_s: float = 2.0,
                 on_progress: Callable[[RunTotals], None] | None = None):
        self.campaign_id = campaign_id
        self.total = max(total, 1)
        self.publish = publish
        self.min_interval_s = min_interval_s
        self.on_progress = on_progress
        self._progress_id = None
        self._last = 0.0

    def start(self, totals: RunTotals) -> None:
        if self.publish:
            from prefect.artifacts import create_progress_artifact

            self._progress_id = create_progress_artifact(
                progress=self._percent(totals),
                key=artifact_key(self.campaign_id, "progress"),
                description=f"Shots finished for {self.campaign_id}",
            )
        if self.on_progress:
            self.on_progress(totals)

    def _percent(self, totals: RunTotals) -> float:
        return round(100.0 * totals.done / self.total, 1)

    def progress(self, totals: RunTotals, force: bool = False) -> None:
        if self.on_progress:
            self.on_progress(totals)
        now = time.monotonic()
        if self._progress_id is None or (not force and now - self._last < self.min_interval_s):
            return
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(self._progress_id, self._percent(totals))
        self._last = now

    def failures(self, rows: list[dict[str, Any]]) -> None:
        if self.publish and rows:
            from prefect.artifacts import create_table_artifact

            create_table_artifact(
                table=rows,
                key=artifact_key(self.campaign_id, "failures"),
                description=f"Shots that failed in this run of {self.campaign_id}",
            )

    def summary(self, markdown: str) -> None:
        if self.publish:
            from prefect.artifacts import create_markdown_artifact

            create_markdown_artifact(
                markdown=markdown,
                key=artifact_key(self.campaign_id, "summary"),
                description=f"Render summary for {self.campaign_id}",
            )
