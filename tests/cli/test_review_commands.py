"""`horse approve` / `horse deliver` as a user runs them: decisions refused in one line with exit 2,
approved masters delivered under human names with SHA256SUMS and an OpenTimelineIO timeline that
names every clip with its sha256, re-delivery incremental and `--verify` catching a changed file."""

from __future__ import annotations

import hashlib
import io

import opentimelineio as otio
import pytest
import pyarrow as pa
import pyarrow.parquet as pq

from catalog import Store, decision_event
from tests.cli.cli_testlib import horse, one_json_document
from tests.cli.test_qc_command import write_clip

pytestmark = pytest.mark.slow


def campaign_with_masters(tmp_path, store_url: str) -> Store:
    """Version 1 of `spot`: s2 then s1 in the manifest, each en-16x9 take 1 with a social master;
    s1's take 2 failed."""
    store = Store(store_url)
    sink = io.BytesIO()
    pq.write_table(pa.table({"shot_id": ["s2", "s1"]}), sink)
    manifest = store.put_blob(sink.getvalue(), "parquet")
    entries = []
    for i, shot in enumerate(["s1", "s2"]):
        clip = store.put_blob(write_clip(tmp_path / f"{shot}.mp4", seconds=0.4), "mp4")
        master = store.put_blob(write_clip(tmp_path / f"{shot}-social.mp4", seconds=0.4 + 0.04 * i), "mp4")
        entries.append({"shot_id": shot, "variant": "en-16x9-t1", "language": "en", "aspect_ratio": "16:9", "take": 1,
                        "render_key": hashlib.sha256(shot.encode()).hexdigest(), "status": "ok",
                        "blob_uri": clip.uri, "sha256": clip.sha256, "qc_status": "passed",
                        "qc": {"social": {"passed": True, "master_uri": master.uri, "master_sha256": master.sha256,
                                          "checks": {}}}})
    entries.append({"shot_id": "s1", "variant": "en-16x9-t2", "take": 2, "status": "failed", "blob_uri": None,
                    "sha256": None, "render_key": "f" * 64, "error_class": "GpuOutOfMemory"})
    store.versions.publish("spot", entries, manifest_uri=manifest.uri, manifest_sha256=manifest.sha256)
    return store


def test_decide_and_deliver_from_the_command_line(tmp_path, tmp_store):
    store = campaign_with_masters(tmp_path, tmp_store)
    at = ("--store", tmp_store)

    # every refusal is unit-tested in tests/catalog/test_approvals.py; here: how the command says it
    refused = horse("approve", "spot", "s1", "en-16x9-t2", *at)
    assert refused.returncode == 2 and refused.stderr.strip() == (
        "error: s1/en-16x9-t2: cannot approve a render that failed (GpuOutOfMemory)"), refused.stderr
    approved = horse("approve", "spot", "s1", "en-16x9-t1", "--who", "ari", *at)
    assert approved.returncode == 0, approved.stderr
    listed = one_json_document(horse("review", "spot", "--json", *at))
    assert [(r["shot_id"], r["slot"], r["decision"], r["take"], r["who"]) for r in listed["slots"]] == [
        ("s1", "en-16x9", "approved", 1, "ari"), ("s2", "en-16x9", None, None, None)] and listed["awaiting"] == 1
    store.approvals.record([decision_event("spot", store.versions.read("spot", 1), "s2", "en-16x9", "approved",
                                           take=1, who="dana", source="cli")])

    out = tmp_path / "out"
    first = horse("deliver", "spot", "--destination", "social", "-o", str(out), "--verify", "--json", *at)
    report = one_json_document(first)
    assert first.returncode == 0 and report["copied"] == ["s2_en_16x9_t1.mp4", "s1_en_16x9_t1.mp4"]
    folder = out / "spot" / "social"
    sums = dict(reversed(line.split("  ")) for line in (folder / "SHA256SUMS").read_text().splitlines())
    for name, sha in sums.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha
    timeline = otio.adapters.read_from_file(str(folder / "spot_social_en_16x9.otio"))
    clips = list(timeline.find_clips())
    assert [(c.name, c.metadata["horse"]["sha256"]) for c in clips] == [
        ("s2_en_16x9_t1", sums["s2_en_16x9_t1.mp4"]), ("s1_en_16x9_t1", sums["s1_en_16x9_t1.mp4"])]  # shot order
    assert clips[1].metadata["horse"]["approved_by"] == "ari" and clips[1].duration().value == 10
    assert (folder / "spot_social_en_16x9.edl").read_text().count("s1_en_16x9_t1") >= 1

    changed = folder / "s1_en_16x9_t1.mp4"  # same size, other bytes: only a re-hash can tell
    data = bytearray(changed.read_bytes())
    data[-1] ^= 0xFF
    changed.write_bytes(bytes(data))
    again = one_json_document(horse("deliver", "spot", "--destination", "social", "-o", str(out), "--verify",
                                    "--json", *at))
    assert again["copied"] == [] and len(again["unchanged"]) == 2, "re-delivery copies nothing it already delivered"
    assert again["ok"] is False and again["mismatched"] == [
        f"s1_en_16x9_t1.mp4: sha256 {hashlib.sha256(bytes(data)).hexdigest()[:12]}, manifest {sums['s1_en_16x9_t1.mp4'][:12]}"]

    wrong = horse("deliver", "spot", "--destination", "broadcast-eu", "-o", str(out), *at)
    assert wrong.returncode == 2 and wrong.stderr.strip() == (
        "error: s2/en-16x9-t1: no broadcast-eu master (rendered without that destination; "
        "render or promote it with --destinations broadcast-eu)")
