"""Approved means pinned, as plain planning (no Ray, no Prefect): a changed scene and a new model
fingerprint re-plan every take except the approved one, which is kept as signed off; only
`force_approved` on its shot plans it again."""

from __future__ import annotations

import dataclasses

from catalog import Store, decision_event
from flows.manifest import read_manifest, write_manifest
from flows.plan import Filters, make_plan, model_info
from flows.settings import load_settings

from .conftest import shot


def test_an_approved_take_is_kept_whatever_changes_until_forced(tmp_path, tmp_store):
    def shots(scene):
        rows = [shot("h100", scene, languages=["en"], aspect_ratios=["16:9"], resolution="256p", takes=2)]
        return read_manifest(str(write_manifest(rows, tmp_path / f"{len(scene)}.parquet"))).shots

    model = model_info(load_settings(store_url=tmp_store))
    store = Store(tmp_store)
    first = make_plan(shots("A horse at dawn."), model, store)
    entries = [{**job.entry(), "status": "ok", "blob_uri": store.put_blob(job.variant.encode()).uri,
                "sha256": store.put_blob(job.variant.encode()).sha256} for job in first.jobs]
    version = store.versions.read("spring-launch", store.versions.publish("spring-launch", entries))
    store.approvals.record([decision_event("spring-launch", version, "h100", "en-16x9", "approved", take=1, who="ari",
                                           source="cli")])

    changed = shots("A horse at dusk, in the rain.")
    new_model = dataclasses.replace(model, fingerprint="f" * 64)
    again = make_plan(changed, new_model, store)
    assert [j.variant for j in again.jobs] == ["en-16x9-t2"], "the approved take is not planned again"
    assert again.jobs[0].render_key != first.jobs[1].render_key  # the scene and model did change the others
    assert [(e["variant"], e["render_key"], e["approval"]["who"]) for e in again.kept] == [
        ("en-16x9-t1", first.jobs[0].render_key, "ari")]

    forced = make_plan(changed, new_model, store, Filters(force_approved=("h100",)))
    assert [j.variant for j in forced.jobs] == ["en-16x9-t1", "en-16x9-t2"] and not forced.kept
    assert [e["variant"] for e in forced.lifted] == ["en-16x9-t1"]


def test_the_summary_says_what_was_kept_approved():
    from flows.progress import RunTotals
    from flows.report import summary_markdown

    summary = summary_markdown("c", 2, RunTotals(planned=1, kept_approved=1), "file:///s", None, [], None, None)
    assert "**Kept (approved):** 1 approved variant(s)" in summary
    assert "Kept (approved)" not in summary_markdown("c", 2, RunTotals(planned=1), "file:///s", None, [], None, None)
