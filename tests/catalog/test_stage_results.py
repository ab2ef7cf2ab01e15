"""Stage results in the catalog, on a local folder and on moto S3: content-addressed blobs found by
stage key in one lookup, a failed read that is an error (never "not there"), and GC that keeps a
preview's latent while it may be promoted and a promoted clip's latent as long as its version."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from botocore.exceptions import EndpointConnectionError

from catalog import Retention, render_key
from catalog.stage_results import record_key
from catalog_testlib import make_receipt, version_entry

DAY = timedelta(days=1)
RETENTION = Retention(preview_days=30, retry_hours=48)


def key(name: str) -> str:
    return render_key({"stage": name})


def test_put_then_one_lookup_finds_them_and_loads_the_bytes(store):
    base = store.stage_results.put(key("base"), "base", b"base latent", retention="preview",
                                   made_by={"render_key": key("job"), "try": "1"})
    assert base.blob_uri.endswith(f"/blobs/sha256/{base.sha256[:2]}/{base.sha256[2:4]}/{base.sha256}.safetensors")
    found = store.stage_results.existing([key("base"), key("never stored")])
    assert list(found) == [key("base")] and found[key("base")] == base
    assert store.stage_results.load(base) == b"base latent"

    # the first record wins: a second put of other bytes (another device) keeps what a resume must see
    again = store.stage_results.put(key("base"), "base", b"other bytes", retention="retry")
    assert again == base and store.stage_results.load(again) == b"base latent"
    # a preview upgrades the retention of a record a plain render made
    sr = store.stage_results.put(key("sr"), "sr", b"sr latent")
    upgraded = store.stage_results.put(key("sr"), "sr", b"sr latent", retention="preview")
    assert (sr.retention, upgraded.retention, upgraded.blob_uri) == ("retry", "preview", sr.blob_uri)
    assert store.stage_results.existing([key("sr")])[key("sr")].retention == "preview"

    store.root.delete(store.blobs.key_from(base.blob_uri))
    assert store.stage_results.load(base) is None, "a blob that is gone is reported as gone"


def test_a_record_that_cannot_be_read_is_an_error_not_absence(store):
    store.root.write_replace(record_key(key("base")), b"{not json")
    with pytest.raises(ValueError, match="unreadable"):
        store.stage_results.existing([key("base")])


def test_an_unreachable_store_is_an_error_not_absence(flaky_s3, monkeypatch):
    from catalog import Store

    monkeypatch.setenv("HORSE_STORE_RETRY_SECONDS", "1")
    store = Store("s3://flaky/stages", flaky_s3.options)
    store.stage_results.put(key("base"), "base", b"base latent")
    flaky_s3.stop()
    try:
        with pytest.raises(EndpointConnectionError):
            store.stage_results.existing([key("base")])
    finally:
        flaky_s3.start()
    assert list(store.stage_results.existing([key("base")])) == [key("base")]


def test_gc_keeps_promotable_previews_and_promoted_latents_and_counts_bytes_by_kind(store):
    now = datetime.now(timezone.utc)
    preview = store.stage_results.put(key("preview"), "base", b"preview latent", retention="preview")
    promoted = store.stage_results.put(key("promoted"), "base", b"promoted latent", retention="preview")
    retry = store.stage_results.put(key("retry"), "sr", b"sr latent kept for retries")
    clip = make_receipt(store, "camp", "s1", "en-16x9-t2", content=b"promoted clip")
    store.index.commit([clip])
    entry = {**version_entry(clip), "role": "promoted",
             "promoted_from": {"variant": "en-16x9-t2-preview", "stage_result_uri": promoted.blob_uri}}
    sheet = store.put_blob(b"contact sheet", "jpg")
    store.versions.publish("camp", [entry], contact_sheet_uri=sheet.uri)
    blobs_before = set(store.root.list_files("blobs"))

    # two days on: the retry result is past 48 h; previews are promotable for 30 days
    dry = store.gc(grace=0, dry_run=True, retention=RETENTION, now=now + 3 * DAY)
    assert dry.expired_stage_results == [key("retry")]
    assert dry.deleted == [retry.blob_uri]
    assert set(store.root.list_files("blobs")) == blobs_before and key("retry") in store.stage_results.existing(
        [key("retry")]), "a dry run deletes nothing"
    kinds = dry.by_kind
    assert kinds["stage results"] == {"files": 3, "bytes": len(b"preview latent") + len(b"promoted latent")
                                      + len(b"sr latent kept for retries"), "deleted_files": 1,
                                      "deleted_bytes": len(b"sr latent kept for retries")}
    assert kinds["clips"]["bytes"] == len(b"promoted clip") and kinds["contact sheets"]["bytes"] == len(b"contact sheet")

    real = store.gc(grace=0, dry_run=False, retention=RETENTION, now=now + 3 * DAY)
    assert real.deleted == dry.deleted and not store.stage_results.existing([key("retry")])

    # 31 days on: the unpromoted preview's latent goes; the promoted one stays as long as its version
    later = store.gc(grace=0, dry_run=False, retention=RETENTION, now=now + 31 * DAY)
    assert later.expired_stage_results == [key("preview")] and later.deleted == [preview.blob_uri]
    assert set(store.stage_results.existing([key("preview"), key("promoted")])) == {key("promoted")}
    assert store.stage_results.load(promoted) == b"promoted latent"
    assert store.open_blob(clip["blob_uri"]).read() == b"promoted clip"
