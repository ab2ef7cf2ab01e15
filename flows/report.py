"""What a person reads after a run: the failures table and the summary with its contact sheet.
Content is built by plain functions (tested without Prefect) and published as Prefect artifacts;
progress while the run goes is `flows.progress`.
"""

from __future__ import annotations

import base64
from typing import Any

from flows.progress import RunTotals
from horse_actors import RenderOutcome


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    text = "-".join(parts).lower()
    return "".join(ch if ch.isalnum() and ch.isascii() else "-" for ch in text).strip("-")[:100]


def failure_rows(failures: list[tuple[dict, RenderOutcome]]) -> list[dict[str, Any]]:
    return [
        {
            "shot": entry["shot_id"],
            "variant": entry["variant"],
            "error_class": outcome.error_class or ("Degraded" if outcome.status == "degraded" else ""),
            "message": (outcome.error_message or (f"rendered at {outcome.rendered_resolution}, not as requested "
                                                  f"(fallback {'+'.join(outcome.fallback)})"
                                                  if outcome.status == "degraded" else ""))[:300],
            "retryable": bool(outcome.retryable),
            "attempts": outcome.attempt,
            "render_key": outcome.render_key[:12],
        }
        for entry, outcome in failures
    ]


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
        "| planned | already rendered | rendered now | degraded | failed | cancelled | invalid rows | GPU-seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {totals.planned} | {totals.cached} | {totals.rendered} | {totals.degraded} | {totals.failed} | {totals.cancelled} "
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


def create_failures_table(campaign_label: str, rows: list[dict[str, Any]]) -> None:
    """The run's failed shots as a table artifact (inside a flow run)."""
    from prefect.artifacts import create_table_artifact

    create_table_artifact(table=rows, key=artifact_key(campaign_label, "failures"),
                          description=f"Shots that failed in this run of {campaign_label}")


def create_summary(campaign_id: str, markdown: str) -> None:
    """A campaign's render summary as a markdown artifact (inside a flow run)."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown=markdown, key=artifact_key(campaign_id, "summary"),
                             description=f"Render summary for {campaign_id}")
