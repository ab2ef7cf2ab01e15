"""The delivery QC index (index/qc): one row per clip x destination x check, from the receipts;
"every clip that failed broadcast-eu true peak" is one query; masters are kept by GC."""

from __future__ import annotations

import json

import deltalake
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from catalog import InvalidId, Store
from catalog_testlib import make_receipt


def checks(**failed: float) -> dict:
    """A destination's checks: loudness, true peak and black, passing unless given a failing value."""
    values = {"loudness": -23.0, "true_peak": -1.5, "black": 0.0}
    return {name: {"passed": name not in failed, "measured": failed.get(name, value), "limit": "spec"}
            for name, value in values.items()}


def with_qc(store: Store, receipt: dict, **per_destination: dict) -> dict:
    qc = {}
    for destination, result in per_destination.items():
        master = store.put_blob(f"{receipt['shot_id']} {destination} master".encode(), "mp4")
        qc[destination] = {"passed": all(c["passed"] for c in result.values()), "checks": result,
                           "master": {"uri": master.uri, "sha256": master.sha256, "bytes": master.bytes}}
    return store.write_receipt({**receipt, "qc": qc, "rendered_seed": receipt["seed"],
                                "qc_status": "passed" if all(d["passed"] for d in qc.values()) else "failed"})


def test_failed_true_peak_is_one_query_and_results_summarise_each_clip(tmp_path):
    store = Store(str(tmp_path / "store"))
    hot = with_qc(store, make_receipt(store, "spot", "s010", "en-16x9-t1"),
                  **{"broadcast-eu": checks(true_peak=-0.4), "social": checks()})
    fine = with_qc(store, make_receipt(store, "spot", "s020", "en-16x9-t1"), **{"broadcast-eu": checks()})
    quiet = with_qc(store, make_receipt(store, "spot", "s030", "en-16x9-t1"), social=checks(loudness=-19.0))
    broken = store.write_receipt(make_receipt(store, "spot", "s040", "en-16x9-t1", status="failed"))
    assert store.qc.commit([hot, fine, quiet, broken], run_id="run-1") == 12
    store.qc.commit([hot])  # a receipt committed again adds no rows
    assert store.qc.to_arrow().num_rows == 12

    table = deltalake.DeltaTable(str(tmp_path / "store" / "index" / "qc")).to_pyarrow_table()
    failed = table.filter((pc.field("destination") == "broadcast-eu") & (pc.field("check") == "true_peak")
                          & ~pc.field("passed"))
    assert failed.select(["shot_id", "value", "measured"]).to_pylist() == [{"shot_id": "s010", "value": -0.4, "measured": "-0.4"}]
    assert failed["master_uri"][0].as_py() == json.loads(hot["qc"])["broadcast-eu"]["master"]["uri"]
    sql = deltalake.QueryBuilder().register("qc", deltalake.DeltaTable(str(tmp_path / "store" / "index" / "qc"))).execute(
        "SELECT shot_id FROM qc WHERE destination = 'broadcast-eu' AND \"check\" = 'true_peak' AND NOT passed")
    assert pa.table(sql.read_all()).to_pylist() == [{"shot_id": "s010"}]
    assert store.qc.to_arrow(destination="social", passed=False)["shot_id"].to_pylist() == ["s030"]

    results = store.qc.results([hot["render_key"], broken["render_key"]])
    assert list(results) == [hot["render_key"]]
    eu = results[hot["render_key"]]["broadcast-eu"]
    assert eu["passed"] is False and eu["checks"]["true_peak"] == {"passed": False, "measured": -0.4, "limit": "spec"}
    assert results[hot["render_key"]]["social"]["passed"] is True

    masters = store.qc.referenced_uris()
    assert len(masters) == 4
    assert not masters & set(store.gc(grace=0, dry_run=True, include_receipts=False).deleted), \
        "the QC index keeps the masters it names"


def test_a_master_outside_the_store_is_refused(tmp_path):
    store = Store(str(tmp_path / "store"))
    receipt = make_receipt(store, "spot", "s010", "en-16x9-t1")
    stranger = {"uri": "file:///etc/passwd", "sha256": "0" * 64}
    with pytest.raises(InvalidId, match="qc master"):
        store.write_receipt({**receipt, "qc": {"social": {"passed": True, "checks": {}, "master": stranger}}})


def test_dialogue_results_are_one_row_per_clip_and_an_unchecked_line_has_none(tmp_path):
    store = Store(str(tmp_path / "store"))
    heard = {"status": "dialogue_failed", "reason": "WER 0.50 over 0.20", "transcript": "happy horses here",
             "error_rate": 0.5, "metric": "wer", "max_error_rate": 0.2, "missing_terms": ["Happy Horse"],
             "language_detected": None, "seed": 9, "attempts": 2}
    failed = store.write_receipt({**make_receipt(store, "spot", "s010", "en-16x9-t1"),
                                  "dialogue": heard, "dialogue_status": "dialogue_failed"})
    unchecked = store.write_receipt({**make_receipt(store, "spot", "s020", "de-16x9-t1"), "dialogue_status": "unchecked",
                                     "dialogue": {"status": "unchecked", "reason": "cannot hear de", "language": "de"}})
    assert store.qc.commit([failed, unchecked]) == 1
    [row] = store.qc.to_arrow(check="dialogue", passed=False).to_pylist()
    assert (row["shot_id"], row["destination"], row["value"], row["limit"]) == ("s010", "", 0.5, "WER <= 0.2")
    results = store.qc.dialogue_results([failed["render_key"], unchecked["render_key"]])
    assert results[failed["render_key"]]["transcript"] == "happy horses here"
    assert list(results) == [failed["render_key"]], "nothing was heard: no row (the render index says unchecked)"
    assert store.qc.results([failed["render_key"]]) == {}, "the clip's dialogue is no destination's result"
    with pytest.raises(InvalidId, match="dialogue_status"):
        store.write_receipt({**make_receipt(store, "spot", "s030", "en-16x9-t1"), "dialogue_status": "maybe"})


def test_qc_rows_are_partitioned_by_campaign_read_per_campaign_and_maintained(tmp_path):
    from catalog.maintenance import maintain

    store = Store(str(tmp_path / "store"))
    spring = [with_qc(store, make_receipt(store, "spring", f"s{i:03d}", "en-16x9-t1"), social=checks()) for i in range(3)]
    autumn = with_qc(store, make_receipt(store, "autumn", "s001", "en-16x9-t1"), social=checks(black=0.9))
    for receipt in [*spring, autumn]:  # one commit each: small files to compact
        store.qc.commit([receipt])
    keys = [r["render_key"] for r in [*spring, autumn]]
    assert store.qc.table.read(lambda dt: dt.metadata().partition_columns, None) == ["campaign_id"]
    assert set(store.qc.results(keys, campaigns=["spring"])) == set(keys[:3])
    assert set(store.qc.results(keys)) == set(keys)
    assert store.qc.to_arrow(campaigns=[]).num_rows == 0

    before = sorted(map(str, store.qc.to_arrow().to_pylist()))
    report = maintain(store, retention_hours=0, gc_grace=3600, dry_run=False)
    qc = next(t for t in report.tables if t.table == "index/qc")
    assert (qc.files_before, qc.files_after, qc.compacted_files) == (4, 2, 3)
    assert sorted(map(str, store.qc.to_arrow().to_pylist())) == before
