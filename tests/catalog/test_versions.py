import threading

import pytest

from catalog import VersionNotFound, InvalidId
from catalog_testlib import make_receipt, version_entry

SHOTS = ["s1", "s2", "s3"]


def _entries(receipts):
    return [version_entry(r) for r in receipts]


def test_three_versions_old_one_keeps_its_files(store):
    manifest_sha = "ab" * 32
    v1 = [make_receipt(store, "camp", s, "en-16x9-t1", content=f"{s} take one".encode()) for s in SHOTS]
    store.index.commit(v1)
    assert store.versions.publish("camp", _entries(v1), "s3://briefs/camp.parquet", manifest_sha, "fp-1", "git-1", "run-1") == 1
    # version 2 re-renders s2; version 3 re-renders s3 and adds s4
    v2 = [v1[0], make_receipt(store, "camp", "s2", "en-16x9-t1", content=b"s2 take two", inputs={"p": 2}), v1[2]]
    assert store.versions.publish("camp", _entries(v2), "s3://briefs/camp.parquet", manifest_sha, "fp-1", "git-2", "run-2") == 2
    v3 = [v2[0], v2[1], make_receipt(store, "camp", "s3", "en-16x9-t1", content=b"s3 take three", inputs={"p": 3}),
          make_receipt(store, "camp", "s4", "en-16x9-t1", content=b"s4 new")]
    assert store.versions.publish("camp", _entries(v3), "s3://briefs/camp.parquet", manifest_sha, "fp-2", "git-3", "run-3") == 3

    infos = store.versions.list("camp")
    assert [i.number for i in infos] == [1, 2, 3] and [i.entries for i in infos] == [3, 3, 4]
    assert infos[0].code_version == "git-1" and infos[2].model_fingerprint == "fp-2" and infos[1].run_id == "run-2"
    assert store.versions.latest("camp") == 3
    assert store.versions.read("camp")["version"] == 3
    assert store.versions.read("camp", 2)["uri"] == store.version_uri("camp", 2)

    first = store.versions.read("camp", 1)
    assert first["manifest_sha256"] == manifest_sha and first["index_version"] is not None
    opened = {e["shot_id"]: store.open_blob(e["blob_uri"]).read() for e in first["entries"]}
    assert opened == {"s1": b"s1 take one", "s2": b"s2 take one", "s3": b"s3 take one"}
    third = {e["shot_id"]: store.open_blob(e["blob_uri"]).read() for e in store.versions.read("camp", 3)["entries"]}
    assert third == {"s1": b"s1 take one", "s2": b"s2 take two", "s3": b"s3 take three", "s4": b"s4 new"}

    table = store.versions.to_arrow("camp")
    assert table["version"].to_pylist() == [1, 2, 3] and table["entries"].to_pylist() == [3, 3, 4]
    assert store.versions.campaigns() == ["camp"]
    # a version file is immutable: writing number 1 again is refused by the store itself
    assert not store.root.write_if_absent("campaigns/camp/versions/000001.json", b"{}")
    assert store.versions.read("camp", 1)["sha256"] == infos[0].sha256


def test_missing_versions_and_bad_entries(store):
    with pytest.raises(VersionNotFound):
        store.versions.read("nothing")
    assert store.versions.list("nothing") == [] and store.versions.latest("nothing") is None
    r = make_receipt(store, "camp", "s1", "v1")
    with pytest.raises(InvalidId, match="same shot variant twice"):
        store.versions.publish("camp", _entries([r, r]))
    with pytest.raises(InvalidId, match="blob_uri"):
        store.versions.publish("camp", [{**_entries([r])[0], "blob_uri": "s3://other/x"}])
    with pytest.raises(InvalidId, match="contact_sheet_uri"):
        store.versions.publish("camp", _entries([r]), contact_sheet_uri="/tmp/sheet.jpg")
    with pytest.raises(VersionNotFound):
        store.versions.read("camp", 1)
    failed = make_receipt(store, "camp", "s2", "v1", status="failed")
    assert store.versions.publish("camp", [version_entry(failed)]) == 1
    assert store.versions.list("camp")[0].failed == 1


def test_concurrent_publishers_get_distinct_numbers(tmp_path):
    from catalog import Store

    store = Store(tmp_path / "store")
    r = make_receipt(store, "camp", "s1", "v1")
    numbers, errors = [], []

    def publish(i):
        try:
            numbers.append(Store(tmp_path / "store").versions.publish("camp", _entries([r]), run_id=f"run-{i}"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(numbers) == [1, 2, 3, 4]
    assert [i.number for i in store.versions.list("camp")] == [1, 2, 3, 4]
    assert sorted(store.versions.to_arrow("camp")["version"].to_pylist()) == [1, 2, 3, 4]
    # the table is derived: losing it is repaired from the manifests
    assert store.versions.sync_table("camp") == 4


def test_memory_store_index_and_versions():
    import uuid

    from catalog import Store

    store = Store(f"memory://horse-{uuid.uuid4().hex[:8]}")
    r = make_receipt(store, "camp", "s1", "v1")
    store.index.commit([r])
    assert set(Store(store.url).index.existing([r["render_key"]])) == {r["render_key"]}
    assert store.versions.publish("camp", _entries([r])) == 1
    assert Store(store.url).versions.read("camp")["entries"][0]["blob_uri"] == r["blob_uri"]


def test_a_publish_whose_answer_was_lost_is_not_published_twice(store, monkeypatch):
    """The create of version 1 reached the store but its answer was lost; the retried create
    finds the object there. That is our own version 1, not a reason to publish a version 2."""
    r = make_receipt(store, "camp", "s1", "v1")
    create = store.root.write_if_absent

    def answer_lost(key, data):
        create(key, data)
        return False

    monkeypatch.setattr(store.root, "write_if_absent", answer_lost)
    assert store.versions.publish("camp", _entries([r])) == 1
    assert store.versions.numbers("camp") == [1]


def test_version_entries_say_what_was_asked_for_and_what_was_delivered(store):
    degraded = make_receipt(store, "camp", "s1", "v1", status="degraded", resolution="1080p",
                            rendered_resolution="540p", fallback="lower_sr")
    store.versions.publish("camp", _entries([degraded, make_receipt(store, "camp", "s2", "v1")]))
    [info] = store.versions.list("camp")
    assert (info.ok, info.degraded, info.failed) == (1, 1, 0)
    entry = store.versions.read("camp")["entries"][0]
    assert (entry["status"], entry["resolution"], entry["rendered_resolution"], entry["fallback"]) == \
        ("degraded", "1080p", "540p", "lower_sr")
    with pytest.raises(InvalidId, match="blob_uri"):
        store.versions.publish("camp", [{**version_entry(degraded), "blob_uri": None}])
