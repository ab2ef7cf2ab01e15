"""The object store goes away and comes back: every catalog read and write waits for it; a store
that stays away fails the call loudly, and a read that failed is never taken for "nothing there".

A private moto server (`flaky_s3` in tests/conftest.py) is stopped and restarted on the same port.
"""

from __future__ import annotations

import logging
import uuid

import pytest
from botocore.exceptions import EndpointConnectionError

from catalog import Store
from catalog_testlib import make_receipt, version_entry

pytestmark = pytest.mark.slow


@pytest.fixture
def store(flaky_s3):
    return Store(f"s3://flaky/{uuid.uuid4().hex[:12]}", flaky_s3.options)


@pytest.fixture
def short_wait(monkeypatch):
    monkeypatch.setenv("HORSE_STORE_RETRY_SECONDS", "1")


def _filled(store) -> tuple[list[dict], dict]:
    """Two rendered shots with receipts and index rows, a version listing one of them, and a
    blob that only that version references."""
    receipts = [make_receipt(store, "camp", f"s{i}", "v1") for i in range(2)]
    for r in receipts:
        store.write_receipt(r)
    store.index.commit(receipts)
    only_in_version = make_receipt(store, "camp", "s9", "v1", content=b"only in a version")
    store.versions.publish("camp", [version_entry(receipts[0]), version_entry(only_in_version)])
    return receipts, only_in_version


def test_writes_wait_for_the_store_to_come_back(flaky_s3, store, caplog):
    first = store.put_blob(b"clip one", ext="mp4")
    returning = flaky_s3.outage(seconds=4)
    with caplog.at_level(logging.WARNING):
        second = store.put_blob(b"clip two", ext="mp4")  # starts while the store is down
    returning.join()
    assert second.created and store.blob_exists(second.sha256)
    with store.open_blob(first.uri) as f:
        assert f.read() == b"clip one", "what was stored before the outage is still there"
    assert any("unreachable" in record.getMessage() for record in caplog.records), "the wait is logged"


def test_a_store_that_stays_down_fails_with_its_error(flaky_s3, store, short_wait):
    returning = flaky_s3.outage(seconds=4)
    with pytest.raises(EndpointConnectionError):
        store.put_blob(b"never stored", ext="mp4")
    returning.join()


def test_reads_and_commits_wait_for_the_store_to_come_back(flaky_s3, store):
    """Each call starts while the store is down and returns the whole answer once it is back; the
    store comes back only when the call says it waits for it (no lower layer's retry can bridge it)."""
    receipts, _ = _filled(store)
    keys = {r["render_key"] for r in receipts}
    more = make_receipt(store, "camp", "s3", "v1")
    calls = {
        "receipts (read_many)": (lambda: {r["render_key"] for r in store.receipts.read_all()}, keys),
        "one receipt": (lambda: store.read_receipt(receipts[0]["render_key"])["sha256"], receipts[0]["sha256"]),
        "versions": (lambda: [v.entries for v in store.versions.list("camp")], [2]),
        "index lookup (Delta)": (lambda: store.index.existing_keys(keys), keys),
        "index commit (Delta)": (lambda: store.index.commit([more]).inserted, 1),
        "lineage event": (lambda: store.lineage.start(job_name="outage").eventType.value, "START"),
    }
    for name, (call, expected) in calls.items():
        with flaky_s3.down_until_waited_for() as waited:
            assert call() == expected, name
        assert waited.is_set(), f"{name} did not wait"
    assert store.index.to_arrow().num_rows == 3 and len(store.lineage.read_events()) == 1


def _down_after_listing(flaky_s3, store, monkeypatch):
    """The store goes away right after a listing: the reads that follow it fail."""
    listing = store.root.list_files

    def list_then_stop(*args, **kwargs):
        found = listing(*args, **kwargs)
        flaky_s3.stop()
        return found

    monkeypatch.setattr(store.root, "list_files", list_then_stop)


def test_a_failed_read_is_an_error_not_absence(flaky_s3, store, short_wait, monkeypatch):
    receipts, _ = _filled(store)
    _down_after_listing(flaky_s3, store, monkeypatch)
    for name, read in {
        "receipts": store.receipts.read_all,
        "versions": lambda: store.versions.list("camp"),
        # Recovery reads receipts per key, listing nothing (catalog at scale): the store goes first.
        "recovery": lambda: (flaky_s3.stop(), store.recover_unindexed([r["render_key"] for r in receipts], run_id="rerun")),
    }.items():
        with pytest.raises(EndpointConnectionError):
            read()
            pytest.fail(f"{name} returned while the store was down")
        flaky_s3.start()
    flaky_s3.stop()
    with pytest.raises(EndpointConnectionError):
        store.read_receipt(receipts[0]["render_key"])
    with pytest.raises(OSError, match="error sending request"):
        store.index.existing_keys(r["render_key"] for r in receipts)
    flaky_s3.start()


def test_gc_deletes_nothing_unless_it_read_every_reference(flaky_s3, store, short_wait, monkeypatch):
    receipts, only_in_version = _filled(store)
    orphan = store.put_blob(b"orphan", "mp4")
    reading = store.root.read_many

    def read_while_down(keys):  # the store is away exactly while version manifests are read
        flaky_s3.stop()
        try:
            return reading(keys)
        finally:
            flaky_s3.start()

    monkeypatch.setattr(store.root, "read_many", read_while_down)
    with pytest.raises(EndpointConnectionError):
        store.gc(grace=0, dry_run=False)
    assert store.blob_exists(only_in_version["sha256"]) and store.blob_exists(orphan.sha256)

    monkeypatch.undo()
    report = store.gc(grace=0, dry_run=False)
    assert report.deleted == [orphan.uri]
    assert store.blob_exists(only_in_version["sha256"])
