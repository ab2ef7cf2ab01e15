"""Decisions on record (catalog.approvals): append-only events, slot state, validation, what GC keeps."""

from __future__ import annotations

import pytest
from catalog_testlib import make_receipt, version_entry

from catalog import InvalidDecision, Store, decision_event


def publish(store: Store) -> dict:
    """hero: en-16x9 takes 1 (ok, with a poster and a master) and 2 (failed), and a take-3 preview."""
    t1 = make_receipt(store, "spot", "hero", "en-16x9-t1", take=1)
    t2 = make_receipt(store, "spot", "hero", "en-16x9-t2", status="failed", take=2)
    t3 = make_receipt(store, "spot", "hero", "en-16x9-t3-preview", take=3)
    poster = store.put_blob(b"poster", "jpg").uri
    master = store.put_blob(b"master of t1", "mp4").uri
    entries = [{**version_entry(t1), "poster_uri": poster, "qc": {"social": {"passed": True, "master_uri": master}}},
               version_entry(t2), version_entry(t3)]
    number = store.versions.publish("spot", entries)
    return store.versions.read("spot", number)


def test_decisions_are_events_and_the_newest_is_the_state(tmp_path):
    store = Store(tmp_path / "store")
    version = publish(store)
    changes = decision_event("spot", version, "hero", "en-16x9", "changes_requested", note="warmer light",
                             who="dana", source="cli")
    approve = decision_event("spot", version, "hero", "en-16x9", "approved", take=1, who="ari", source="cli")
    store.approvals.record([changes])
    store.approvals.record([approve])

    events = store.approvals.events("spot")
    assert [e["decision"] for e in events] == ["changes_requested", "approved"]  # appended, nothing replaced
    assert events[0]["note"] == "warmer light" and events[1]["who"] == "ari"
    assert events[1]["render_key"] == version["entries"][0]["render_key"] and events[1]["take"] == 1
    assert store.approvals.state("spot")[("hero", "en-16x9")].decision == "approved"
    kept = store.approved_entries("spot")
    assert list(kept) == [("hero", "en-16x9-t1")]
    assert kept[("hero", "en-16x9-t1")]["sha256"] == version["entries"][0]["sha256"]
    assert kept[("hero", "en-16x9-t1")]["approval"]["who"] == "ari"

    store.approvals.record([decision_event("spot", version, "hero", "en-16x9", "rejected", who="dana", source="cli")])
    assert store.approved_entries("spot") == {}  # the newest decision wins
    assert len(store.approvals.events("spot")) == 3


@pytest.mark.parametrize("shot,slot,decision,take,message", [
    ("villain", "en-16x9", "approved", 1, "shot 'villain': not in spot version 1 (shots: hero)"),
    ("hero", "de-16x9", "approved", 1, "shot hero: no variant 'de-16x9' in spot version 1 (variants: en-16x9)"),
    ("hero", "en-16x9", "approved", 9, "hero/en-16x9: no take 9 in spot version 1 (takes: 1, 2, 3)"),
    ("hero", "en-16x9", "approved", 2, "hero/en-16x9-t2: cannot approve a render that failed (RenderError)"),
    ("hero", "en-16x9", "changes_requested", None, "hero/en-16x9: requesting changes needs a --note"),
])
def test_bad_decisions_are_refused_in_one_line(tmp_path, shot, slot, decision, take, message):
    store = Store(tmp_path / "store")
    version = publish(store)
    with pytest.raises(InvalidDecision) as refused:
        decision_event("spot", version, shot, slot, decision, take=take, who="ari", source="cli")
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_gc_keeps_every_file_an_approved_take_stands_on(tmp_path):
    store = Store(tmp_path / "store")
    version = publish(store)
    t1 = version["entries"][0]
    store.approvals.record([decision_event("spot", version, "hero", "en-16x9", "approved", take=1, who="ari",
                                           source="cli")])
    master = t1["qc"]["social"]["master_uri"]
    assert set(store.approved_uris()) == {t1["blob_uri"], t1["poster_uri"], master}
    stray = store.put_blob(b"nobody names me", "mp4").uri

    report = store.gc(grace=0, dry_run=False)
    assert report.deleted == [stray]
    for uri in (t1["blob_uri"], t1["poster_uri"], master):
        with store.open_blob(uri) as f:
            assert f.read()
