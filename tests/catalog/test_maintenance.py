"""Catalog maintenance (catalog/maintenance.py): compaction, vacuum within the retention, GC; every
campaign version's references stay readable, and it is safe while another process commits."""

import multiprocessing
import time

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from catalog.maintenance import maintain
from catalog_testlib import commit_worker, make_receipt, version_entry


def commit_batches(store, campaign: str, batches: int, per_batch: int, tag: str = "") -> list[dict]:
    rows = []
    for b in range(batches):
        batch = [make_receipt(store, campaign, f"{tag}b{b}-s{i}", "en-16x9-t1") for i in range(per_batch)]
        store.index.commit(batch)
        rows += batch
    return rows


def rows_at(store, version: int) -> set[str]:
    """Render keys of the index as it was at `version` (time travel reads every file of it)."""
    dt = DeltaTable(store.index.table.uri, version=version, storage_options=store.root.delta_storage_options)
    return set(dt.to_pyarrow_dataset().to_table(columns=["render_key"])["render_key"].to_pylist())


def sorted_index(store) -> list[dict]:
    return sorted(store.index.to_arrow().to_pylist(), key=lambda r: r["render_key"])


def test_maintenance_keeps_versions_readable_and_time_travel_to_the_horizon(store):
    spring = commit_batches(store, "spring", 3, 4)
    store.versions.publish("spring", [version_entry(r) for r in spring])
    pinned = store.index.version()
    autumn = commit_batches(store, "autumn", 3, 4)
    store.versions.publish("autumn", [version_entry(r) for r in autumn])
    pinned_too = store.index.version()
    extra = commit_batches(store, "spring", 2, 3, tag="late-")
    horizon = store.index.version()  # not pinned by any campaign version
    before = sorted_index(store)
    assert store.index.table.files().num_rows == 8

    # Retention of an hour: compaction removes files, vacuum keeps them (they are minutes old),
    # so every version back to the horizon still reads whole.
    report = maintain(store, retention_hours=1, gc_grace=0, dry_run=False)
    index = report.tables[0]
    assert index.partition_by == ["campaign_id"] and index.kept_versions == [pinned, pinned_too]
    assert (index.files_before, index.files_after, index.compacted_files, index.vacuumed_files) == (8, 2, 8, 0)
    assert sorted_index(store) == before, "compaction changed no row"
    assert rows_at(store, horizon) == {r["render_key"] for r in spring + autumn + extra}

    # Retention 0: only the current version and the pinned ones keep their files.
    report = maintain(store, retention_hours=0, gc_grace=0, dry_run=False)
    # the 8 compacted files, less the 6 the pinned versions use
    assert report.tables[0].vacuumed_files == 2 and report.tables[0].stored_after < index.stored_after
    assert rows_at(store, pinned) == {r["render_key"] for r in spring}
    assert rows_at(store, pinned_too) == {r["render_key"] for r in spring + autumn}
    with pytest.raises(Exception):  # the vacuum really ran: an unpinned old version lost its files
        rows_at(store, horizon - 1)
    assert sorted_index(store) == before
    for campaign in ("spring", "autumn"):
        for entry in store.versions.read(campaign)["entries"]:
            with store.open_blob(entry["blob_uri"]) as f:
                assert f.read(), entry["blob_uri"]


def test_dry_run_changes_nothing(tmp_path):
    from catalog import Store

    store = Store(str(tmp_path / "store"))
    rows = commit_batches(store, "spring", 3, 2)
    orphan = store.put_blob(b"nobody refers to me", "mp4")
    store.versions.publish("spring", [version_entry(r) for r in rows])
    version, files = store.index.version(), store.index.table.files().num_rows

    report = maintain(store, retention_hours=0, gc_grace=0, dry_run=True)
    index = report.tables[0]
    assert report.dry_run and index.compacted_files == 3 and report.gc.deleted == [orphan.uri]
    assert store.index.version() == version and store.index.table.files().num_rows == files
    assert store.blob_exists(orphan.sha256)
    assert report.as_dict()["gc"]["deleted"] == 1


def _reader(url: str, campaign: str, stop, errors) -> None:
    """Plans read the index while maintenance rewrites it: no read may fail."""
    from catalog import Store

    store = Store(url)
    while not stop.is_set():
        try:
            store.index.existing_keys([r["render_key"] for r in store.index.to_arrow(campaign).to_pylist()],
                                      campaigns=[campaign])
        except Exception as exc:  # noqa: BLE001 - reported to the test
            errors.put(f"{type(exc).__name__}: {exc}")
            return


@pytest.mark.slow
def test_maintenance_while_another_process_commits_loses_nothing(tmp_path):
    """A writer process commits receipts (the way a render run does, chunk by chunk) while this
    process compacts and vacuums with retention 0 (the harshest setting) and a reader process
    looks keys up: every committed row is there afterwards and no read failed."""
    from catalog import Store

    url = str(tmp_path / "store")
    store = Store(url)
    commit_batches(store, "conc", 2, 3, tag="seed-")
    ctx = multiprocessing.get_context("spawn")
    errors, stop = ctx.Queue(), ctx.Event()
    workers, batches, per_batch, shared = 2, 6, 4, 2
    writers = [ctx.Process(target=commit_worker, args=(url, None, w, batches, per_batch, shared)) for w in range(workers)]
    reader = ctx.Process(target=_reader, args=(url, "conc", stop, errors))
    for p in writers + [reader]:
        p.start()
    runs = 0
    while any(p.is_alive() for p in writers) or runs < 2:
        maintain(store, retention_hours=0, gc_grace=3600, dry_run=False)
        runs += 1
    for p in writers:
        p.join(240)
    stop.set()
    reader.join(60)
    assert [p.exitcode for p in writers] == [0] * workers and reader.exitcode == 0
    assert errors.empty(), errors.get()
    maintain(store, retention_hours=0, gc_grace=3600, dry_run=False)

    keys = store.index.to_arrow("conc")["render_key"].to_pylist()
    expected = 6 + workers * batches * per_batch + batches * shared
    assert len(keys) == len(set(keys)) == expected, f"{len(keys)} rows after {runs} maintenance runs"
    assert store.index.table.files().num_rows == 1
    print(f"{runs} maintenance runs while {workers} writers committed")


def test_an_unpartitioned_index_from_an_older_horse_is_maintained_and_rebuilt_partitioned(tmp_path):
    from deltalake import write_deltalake

    from catalog import Store
    from catalog.index import RENDER_SCHEMA
    from catalog.receipts import normalize_receipt

    store = Store(str(tmp_path / "store"))
    old = [store.write_receipt(make_receipt(store, c, f"s{i}", "v1")) for c in ("a", "b") for i in range(3)]
    table = pa.Table.from_pylist([normalize_receipt(r) for r in old], schema=RENDER_SCHEMA)
    for half in (table.slice(0, 3), table.slice(3)):  # the old layout: no partitions
        write_deltalake(store.index.table.uri, half, mode="append")
    new = make_receipt(store, "a", "s9", "v1")
    assert store.index.commit([new]).inserted == 1
    keys = [r["render_key"] for r in old + [new]]
    assert store.index.existing_keys(keys, campaigns=["a"]) == {r["render_key"] for r in old[:3] + [new]}
    assert store.index.existing_keys(keys) == set(keys)

    report = maintain(store, retention_hours=0, gc_grace=0, dry_run=False)
    assert report.tables[0].partition_by == [] and report.tables[0].files_after == 1
    assert store.index.existing_keys(keys, campaigns=["b"]) == {r["render_key"] for r in old[3:]}

    store.write_receipt(new)
    assert store.index.rebuild_from_receipts() == 7
    files = store.index.table.files()
    assert sorted(set(files["partition.campaign_id"].to_pylist())) == ["a", "b"]
    assert store.index.existing_keys(keys, campaigns=["a"]) == {r["render_key"] for r in old[:3] + [new]}
