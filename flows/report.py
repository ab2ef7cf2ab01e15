"""What a person reads after a run: the failures table, the delivery QC table and the summary with
its contact sheet (and QC failures called out).
Content is built by plain functions (tested without Prefect) and published as Prefect artifacts;
progress while the run goes is `flows.progress`.
"""

from __future__ import annotations

import base64
from typing import Any

from flows.progress import RunTotals, accelerator_line
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
    qc_section: str | None = None,
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
        *([f"**Accelerator:** {line}.", ""] if (line := accelerator_line(totals.accelerator())) else []),
        f"- Store: `{store_url}`",
    ]
    if totals.kept_approved:
        lines.insert(6, f"**Kept (approved):** {totals.kept_approved} approved variant(s) published as they were "
                        "signed off, not rendered again.\n")
    if version_uri:
        lines.append(f"- Version manifest: `{version_uri}`")
    if sheet_uri:
        lines.append(f"- Contact sheet: `{sheet_uri}`")
    if qc_section:
        lines += ["", qc_section]
    if row_errors:
        lines += ["", "## Rows skipped", ""] + [f"- {err}" for err in row_errors[:200]]
    if sheet_jpeg:
        # Inline, so the UI shows it without access to the store.
        encoded = base64.b64encode(sheet_jpeg).decode()
        lines += ["", "## Contact sheet", "", f"![contact sheet](data:image/jpeg;base64,{encoded})"]
    return "\n".join(lines)


def _failed_checks(result: dict) -> str:
    """`check measured (limit)` for each failed check of one destination."""
    return "; ".join(f"{name} {c['measured']} ({c['limit']})" for name, c in result["checks"].items() if not c["passed"])


def _qc_results(entries: list[dict]):
    for e in entries:
        for destination, result in sorted((e.get("qc") or {}).items()):
            yield e, destination, result


def qc_table_rows(entries: list[dict]) -> list[dict[str, Any]]:
    """One row per clip and destination (one row for a clip the dialogue gate checked without
    destinations): the result, the values a person looks at first, what failed, what was heard."""
    def measured(result: dict, check: str) -> Any:
        return result["checks"].get(check, {}).get("measured")

    rows = []
    for e in entries:
        results = sorted((e.get("qc") or {}).items()) or ([("", None)] if e.get("dialogue") else [])
        heard = e.get("dialogue") or {}
        for destination, result in results:
            checks = result or {"checks": {}}
            rows.append({
                "shot": e["shot_id"], "variant": e["variant"], "destination": destination,
                "result": "" if result is None else "pass" if result["passed"] else "FAIL",
                "loudness_lufs": measured(checks, "loudness"), "true_peak_dbtp": measured(checks, "true_peak"),
                "black_s": measured(checks, "black"), "frozen_s": measured(checks, "frozen"),
                "frames": measured(checks, "duration"),
                "seed": e.get("rendered_seed") if e.get("rendered_seed") == e.get("seed")
                else f"{e.get('rendered_seed')} (re-rolled from {e.get('seed')})",
                "failed_checks": _failed_checks(result) if result else "",
                "master": ((result or {}).get("master_sha256") or "")[:12],
                "dialogue": _DIALOGUE_RESULT.get(heard.get("status"), ""),
                "error_rate": heard.get("error_rate"),
                "heard": heard.get("transcript"),
                "dialogue_reason": heard.get("reason"),
            })
    return rows


_DIALOGUE_RESULT = {"passed": "pass", "dialogue_failed": "FAIL", "unchecked": "unchecked"}


def qc_failures(entries: list[dict]) -> list[dict[str, Any]]:
    return [{"shot": e["shot_id"], "variant": e["variant"], "destination": destination,
             "failed_checks": _failed_checks(result)}
            for e, destination, result in _qc_results(entries) if not result["passed"]]


def qc_markdown(entries: list[dict], gate_note: str | None = None) -> str | None:
    """The summary's QC section: delivery pass counts per destination, failures and re-rolls called
    out; the dialogue gate's counts, failures with what was heard, and why lines went unchecked."""
    results = list(_qc_results(entries))
    heard = [e for e in entries if e.get("dialogue")]
    if not results and not heard:
        return None
    lines = []
    if results:
        lines += ["## Delivery QC", "", "| destination | clips | passed | failed |", "|---|---:|---:|---:|"]
        for destination in sorted({d for _, d, _ in results}):
            passed = [r["passed"] for _, d, r in results if d == destination]
            lines.append(f"| {destination} | {len(passed)} | {sum(passed)} | {len(passed) - sum(passed)} |")
        failed = qc_failures(entries)
        if failed:
            lines += ["", f"**{len(failed)} failed** (clip → destination: check measured (limit)):", ""]
            lines += [f"- {f['shot']} {f['variant']} → {f['destination']}: {f['failed_checks']}" for f in failed[:100]]
    rerolled = [e for e in entries if e.get("rendered_seed") is not None and e["rendered_seed"] != e.get("seed")]
    if rerolled:
        lines += ["", "**Re-rolled** after a black or frozen picture or a wrong line (seed of the take → seed "
                  "delivered):", ""]
        lines += [f"- {e['shot_id']} {e['variant']}: {e['seed']} → {e['rendered_seed']}" for e in rerolled[:100]]
    if heard:
        counts = {s: sum(e["dialogue"]["status"] == s for e in heard) for s in _DIALOGUE_RESULT}
        lines += ["", "## Dialogue gate", "", f"{counts['passed']} passed, {counts['dialogue_failed']} failed "
                  f"(best attempt delivered), {counts['unchecked']} unchecked"]
        if gate_note:
            lines += ["", f"**{gate_note}**"]
        lines += [f"- {e['shot_id']} {e['variant']}: {e['dialogue']['reason']}; heard {e['dialogue'].get('transcript')!r}"
                  for e in heard if e["dialogue"]["status"] == "dialogue_failed"][:100]
    return "\n".join(lines).lstrip("\n")


def create_qc_table(campaign_id: str, rows: list[dict[str, Any]]) -> None:
    """A campaign version's delivery QC as a table artifact (inside a flow run)."""
    from prefect.artifacts import create_table_artifact

    failed = sum(row["result"] == "FAIL" for row in rows)
    unheard = sum(row["dialogue"] == "FAIL" for row in rows)
    create_table_artifact(table=rows, key=artifact_key(campaign_id, "qc"),
                          description=f"Delivery QC of {campaign_id}: {len(rows)} clip x destination results, "
                                      f"{failed} failed; {unheard} rows of clips that failed the dialogue gate")


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
