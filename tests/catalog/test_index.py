import multiprocessing
import time

import pyarrow as pa
import pytest

from catalog import InvalidId, render_key
from catalog_testlib import commit_worker, make_receipt, version_entry


def test_commit_and_bulk_existing(store):
    rows = [make_receipt(store, "camp", f"shot-{i}", "en-16x9-t1") for i in range(20)]
    failed = make_receipt(store, "camp", "shot-bad", "en-16x9-t1", status="failed")
    result = store.index.commit(rows + [failed], run_id="flow-run-1")
    assert (result.rows, result.inserted, result.updated) == (21, 21, 0)
    again = store.index.commit(rows[:5])
    assert again.inserted == 0 and again.updated == 0
    keys = [r["render_key"] for r in rows] + [failed["render_key"], render_key({"missing": 1})]
    found = store.index.existing(keys)
    assert set(found) == {r["render_key"] for r in rows}  # failed and missing keys are not "existing"
    row = found[rows[3]["render_key"]]
    assert row["shot_id"] == "shot-3" and row["blob_uri"] == rows[3]["blob_uri"] and row["seed"] == 7
    assert row["timings"] == '{"denoise":0.5}' and row["created_at"].tzinfo is not None
    assert store.index.existing([failed["render_key"]], status=None)[failed["render_key"]]["status"] == "failed"
    assert store.index.existing_keys(keys) == set(found)
    assert store.index.existing([]) == {}
    assert set(store.index.existing(keys + keys[:3], columns=["shot_id"])[rows[0]["render_key"]]) == {
        "shot_id", "render_key", "campaign_id", "status"}, "the columns asked for, duplicate keys asked once"
    for bad in ("A" * 64, "a" * 63, None, "a" * 64 + "\n"):  # checked in one pass; the first bad key is named
        with pytest.raises(InvalidId, match=r"render_key .*must be 64 lowercase hex") as refused:
            store.index.existing([*keys[:2], bad, "../x"])
        assert refused.value.value == bad


def test_failed_row_is_replaced_by_success_but_success_never_changes(store):
    failed = make_receipt(store, "camp", "s1", "v1", status="failed")
    store.index.commit([failed])
    ok = make_receipt(store, "camp", "s1", "v1", content=b"first render")
    assert ok["render_key"] == failed["render_key"]
    assert store.index.commit([ok]).updated == 1
    other = make_receipt(store, "camp", "s1", "v1", content=b"second render")
    store.index.commit([other, {**failed, "created_at": "2099-01-01T00:00:00Z"}])
    row = store.index.existing([ok["render_key"]])[ok["render_key"]]
    assert row["status"] == "ok" and row["sha256"] == ok["sha256"]
    assert store.index.to_arrow().num_rows == 1


def test_empty_index_lookups(store):
    assert store.index.existing([render_key({"a": 1})]) == {}
    assert store.index.version() is None
    assert store.index.to_arrow().num_rows == 0


def test_receipts_first_wins_and_rebuild_index(store):
    ok = make_receipt(store, "camp", "s1", "v1", content=b"one")
    assert store.write_receipt(ok)["sha256"] == ok["sha256"]
    dup = make_receipt(store, "camp", "s1", "v1", content=b"two")
    assert store.write_receipt(dup)["sha256"] == ok["sha256"]  # first receipt is canonical
    bad = make_receipt(store, "camp", "s2", "v1", status="failed")
    store.write_receipt(bad)
    assert store.read_receipt(bad["render_key"])["status"] == "failed"
    fixed = make_receipt(store, "camp", "s2", "v1", content=b"three")
    store.write_receipt(fixed)
    assert store.read_receipt(bad["render_key"])["status"] == "ok"
    assert store.write_receipt(bad)["status"] == "ok"  # a late failure does not undo a success
    others = [make_receipt(store, "camp", f"x{i}", "v1") for i in range(5)]
    for r in others:
        store.write_receipt(r)
    assert store.read_receipt(render_key({"nothing": 0})) is None

    store.index.commit([make_receipt(store, "camp", "stray", "v1")])  # in the index, no receipt
    version_before = store.index.version()
    assert store.index.rebuild_from_receipts(run_id="rebuild-1") == 7
    table = store.index.to_arrow()
    assert table.num_rows == 7 and len(set(table["render_key"].to_pylist())) == 7
    assert store.index.existing([ok["render_key"]])[ok["render_key"]]["sha256"] == ok["sha256"]
    assert store.index.existing([fixed["render_key"]])[fixed["render_key"]]["status"] == "ok"
    assert store.index.version() == version_before + 1  # time travel still reaches the old index


def test_commit_metadata_records_run_id(store):
    store.index.commit([make_receipt(store, "camp", "s1", "v1")], run_id="flow-run-42")
    meta = store.index.history(1)[0]
    assert meta.get("horse.run_id") == "flow-run-42" and meta.get("horse.operation") == "commit_receipts"


@pytest.mark.parametrize("backend_name", ["local", "s3"])
def test_four_processes_commit_at_once(backend_name, tmp_path, request):
    """4 spawned processes x 3 batches (5 own keys + 3 keys every worker also commits)."""
    from catalog import Store

    if backend_name == "local":
        url, options = str(tmp_path / "store"), None
    else:
        s3 = request.getfixturevalue("s3_server")
        url, options = f"s3://{s3['bucket']}/conc-{time.time_ns()}", s3["storage_options"]
    workers, batches, per_batch, shared = 4, 3, 5, 3
    ctx = multiprocessing.get_context("spawn")
    retries = ctx.Queue()
    procs = [ctx.Process(target=commit_worker, args=(url, options, w, batches, per_batch, shared, retries))
             for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    assert [p.exitcode for p in procs] == [0] * workers
    lost = sum(retries.get(timeout=5) for _ in procs)
    print(f"{backend_name}: {lost} conflicting commits retried")  # usually > 0; timing decides
    table = Store(url, options).index.to_arrow()
    keys = table["render_key"].to_pylist()
    expected = workers * batches * per_batch + batches * shared
    assert len(keys) == expected and len(set(keys)) == expected
    shots = set(table["shot_id"].to_pylist())
    assert {f"w{w}-b{b}-s{i}" for w in range(workers) for b in range(batches) for i in range(per_batch)} <= shots


def test_recover_unindexed_commits_only_successful_receipts_asked_for(store):
    rendered = [make_receipt(store, "camp", f"s{i}", "v1") for i in range(3)]
    failed = make_receipt(store, "camp", "bad", "v1", status="failed")
    for r in rendered + [failed]:
        store.write_receipt(r)  # an interrupted run: receipts written, index commit never happened
    asked = [r["render_key"] for r in rendered[:2]] + [failed["render_key"], render_key({"never": 1})]
    recovered = store.recover_unindexed(asked, run_id="rerun-1")
    assert set(recovered) == {r["render_key"] for r in rendered[:2]}
    assert recovered[rendered[0]["render_key"]]["sha256"] == rendered[0]["sha256"]
    assert set(store.index.existing_keys(r["render_key"] for r in rendered + [failed])) == set(recovered)
    assert store.index.history(1)[0]["horse.run_id"] == "rerun-1"
    assert store.recover_unindexed([], run_id="rerun-2") == {}


LOWER_SR = {"resolution": "1080p", "rendered_resolution": "540p", "fallback": "tiled_decode+lower_sr"}


def test_a_degraded_render_is_never_cached_under_the_requested_key(store):
    degraded = make_receipt(store, "camp", "s1", "v1", content=b"540p clip", status="degraded", **LOWER_SR)
    kept = store.write_receipt(degraded)
    assert (kept["status"], kept["rendered_resolution"], kept["fallback"]) == ("degraded", "540p", "tiled_decode+lower_sr")
    assert not store.root.exists(f"receipts/{degraded['render_key'][:2]}/{degraded['render_key']}.json"), \
        "a degraded receipt takes the replaceable slot, not the first-wins one"
    assert store.recover_unindexed([degraded["render_key"]], run_id="r") == {}
    store.index.commit([kept])
    key = degraded["render_key"]
    assert store.index.existing([key]) == {} and store.index.existing_keys([key]) == set()
    row = store.index.existing([key], status=None)[key]
    assert (row["status"], row["resolution"], row["rendered_resolution"], row["fallback"]) == ("degraded", *LOWER_SR.values())

    ok = make_receipt(store, "camp", "s1", "v1", content=b"1080p clip", resolution="1080p", rendered_resolution="1080p")
    assert store.write_receipt(ok)["status"] == "ok"
    assert store.index.commit([ok]).updated == 1
    again = make_receipt(store, "camp", "s1", "v1", content=b"540p again", status="degraded", **LOWER_SR)
    assert store.write_receipt(again)["sha256"] == ok["sha256"], "a later fallback does not undo the ok render"
    store.index.commit([again])
    row = store.index.existing([key])[key]
    assert (row["sha256"], row["rendered_resolution"], row["fallback"]) == (ok["sha256"], "1080p", None)
    with pytest.raises(InvalidId, match="blob_uri"):
        store.write_receipt({**degraded, "blob_uri": None})


def test_an_index_made_before_the_schema_change_keeps_working(store):
    """Tables written by the previous Horse (no resolution columns, no degraded count) are read
    with nulls for the new columns and upgraded by the first commit that needs them."""
    from deltalake import DeltaTable, write_deltalake

    from catalog.index import RENDER_SCHEMA
    from catalog.receipts import normalize_receipt
    from catalog.versions import VERSION_SCHEMA

    new = ("resolution", "rendered_resolution", "fallback")
    old_schema = pa.schema([f for f in RENDER_SCHEMA if f.name not in new])
    old = make_receipt(store, "camp", "old", "v1")
    row = {k: v for k, v in normalize_receipt(old).items() if k not in new}
    opts = store.root.delta_storage_options
    write_deltalake(store.index.table.uri, pa.Table.from_pylist([row], schema=old_schema), storage_options=opts)
    old_versions = pa.schema([f for f in VERSION_SCHEMA if f.name != "degraded"])
    DeltaTable.create(store.versions.table.uri, old_versions, storage_options=opts)

    assert store.index.existing([old["render_key"]])[old["render_key"]]["resolution"] is None
    assert store.index.existing_keys([old["render_key"]]) == {old["render_key"]}
    degraded = make_receipt(store, "camp", "new", "v1", status="degraded", **LOWER_SR)
    assert store.index.commit([degraded]).inserted == 1
    table = store.index.to_arrow()
    assert table.schema.names == RENDER_SCHEMA.names and table.num_rows == 2
    assert store.index.existing([degraded["render_key"]], status=None)[degraded["render_key"]]["fallback"] == LOWER_SR["fallback"]
    assert store.index.rebuild_from_receipts() == 0  # no receipts were written: the index can still be rebuilt

    store.versions.publish("camp", [version_entry(degraded)])
    assert store.versions.to_arrow("camp")["degraded"].to_pylist() == [1]
