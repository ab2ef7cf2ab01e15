from datetime import timedelta

from catalog_testlib import make_receipt, version_entry


def test_gc_deletes_only_unreferenced_old_blobs(store):
    indexed = make_receipt(store, "camp", "s1", "v1", content=b"indexed")
    store.index.commit([indexed])
    versioned = make_receipt(store, "camp", "s2", "v1", content=b"only in a version")
    sheet = store.put_blob(b"contact sheet", "jpg")
    store.versions.publish("camp", [version_entry(versioned)], contact_sheet_uri=sheet.uri)
    receipted = make_receipt(store, "camp", "s3", "v1", content=b"only in a receipt")
    store.write_receipt(receipted)
    orphan = store.put_blob(b"orphan", "mp4")
    orphan_poster = store.put_blob(b"orphan poster", "jpg")

    young = store.gc(grace=timedelta(hours=1), dry_run=False)
    assert young.deleted == [] and young.young == 2 and young.referenced == 4

    dry = store.gc(grace=0, dry_run=True)
    assert sorted(dry.deleted) == sorted([orphan.uri, orphan_poster.uri]) and dry.bytes == 6 + 13
    assert store.blob_exists(orphan.sha256)  # a dry run deletes nothing

    real = store.gc(grace=0, dry_run=False)
    assert sorted(real.deleted) == sorted(dry.deleted)
    assert not store.blob_exists(orphan.sha256) and not store.blob_exists(orphan_poster.sha256, "jpg")
    for r in (indexed, versioned, receipted):
        assert store.open_blob(r["blob_uri"]).read()
    assert store.open_blob(sheet.uri).read() == b"contact sheet", "the version keeps its contact sheet"
    assert store.gc(grace=0, dry_run=False).deleted == []


def test_gc_without_receipts_and_stale_temp_files(tmp_path):
    import os
    import time

    from catalog import Store

    store = Store(tmp_path / "s")
    receipted = make_receipt(store, "camp", "s3", "v1", content=b"only in a receipt")
    store.write_receipt(receipted)
    stale = tmp_path / "s" / "blobs" / "sha256" / "00" / "00" / (".tmp-" + "0" * 32)
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half an upload")
    old = time.time() - 3 * 86400
    os.utime(stale, (old, old))
    report = store.gc(grace=timedelta(days=1), dry_run=False, include_receipts=False)
    assert not stale.exists()
    assert report.young == 1  # the receipted blob is young; without receipts it is not referenced
    assert store.open_blob(receipted["blob_uri"]).read() == b"only in a receipt"
