"""The object store goes away in the middle of a nightly run (moto S3 stopped and restarted on the
same port): the run waits and completes, or fails cleanly; a rerun completes; nothing is lost or
duplicated; GC during an outage deletes nothing. Two shots, tiny model, one CPU actor."""

from __future__ import annotations

import logging

import pytest
import yaml

from catalog import Store
from catalog.index import RenderIndex
from catalog.receipts import Receipts
from catalog.root import Root
from flows.manifest import write_manifest
from flows.nightly import nightly_campaign_render

from .conftest import shot

pytestmark = pytest.mark.slow


@pytest.fixture
def run(flaky_s3, tmp_path):
    """A nightly run of two shots (one variant each) into a fresh prefix of the flaky store."""
    url = f"s3://flaky/{tmp_path.name}"
    config = tmp_path / "horse.yaml"
    config.write_text(yaml.safe_dump({"store_url": url, "storage_options": flaky_s3.options,
                                      "ray": {"cpu_mode": True, "num_actors": 1, "job_deadline_s": 300}}))
    manifest = write_manifest([shot(s, f"Shot {s}: a tram passes in the rain.", languages=["en"], aspect_ratios=["16:9"])
                               for s in ("s510", "s520")], tmp_path / "outage.parquet")

    def nightly() -> dict:
        return nightly_campaign_render(manifest_uri=str(manifest), config_file=str(config))

    nightly.store = Store(url, flaky_s3.options)
    return nightly


def _catalog(store: Store) -> dict:
    """What the store holds, counted."""
    blobs = store.root.list_files("blobs")
    index = store.index.to_arrow()
    return {
        "receipts": store.root.list_files("receipts"),
        "blobs": blobs,
        "clips": [k for k in blobs if k.endswith(".mp4")],
        "index_rows": index.num_rows,
        "indexed_keys": set(index["render_key"].to_pylist()),
        "versions": {n: [(e["render_key"], e["status"], e["sha256"]) for e in store.versions.read("spring-launch", n)["entries"]]
                     for n in store.versions.numbers("spring-launch")},
        # one lineage run per render attempt: deterministic tiny renders would hide a second one in the blobs
        "renders": sum(1 for e in store.lineage.read_events() if e.job.name == "render_shot"),
    }


def test_store_down_mid_render_the_run_waits_and_a_rerun_renders_nothing(prefect_api, ray_cluster, flaky_s3, run,
                                                                         monkeypatch, caplog):
    outages = []
    write = Receipts.write

    def outage_after_the_first_receipt(self, receipt):
        written = write(self, receipt)
        if not outages:  # one shot is stored, the other is still rendering on the only actor
            outages.append(flaky_s3.outage(seconds=3))
        return written

    monkeypatch.setattr(Receipts, "write", outage_after_the_first_receipt)
    with caplog.at_level(logging.WARNING, logger="catalog"):
        first = run()
    outages[0].join()
    assert any("unreachable during" in r.getMessage() for r in caplog.records), "the run met the outage"
    assert (first["rendered"], first["failed"], first["versions"]) == (2, 0, {"spring-launch": 1})

    second = run()
    assert (second["rendered"], second["cached"], second["versions"]) == (0, 2, {"spring-launch": 2})
    held = _catalog(run.store)
    assert len(held["receipts"]) == 2 and len(held["clips"]) == 2 and held["renders"] == 2
    assert held["index_rows"] == 2 and len(held["indexed_keys"]) == 2
    assert held["versions"][1] == held["versions"][2] and {s for _, s, _ in held["versions"][1]} == {"ok"}
    assert {k for k, _, _ in held["versions"][1]} == held["indexed_keys"]

    # GC while the store is down: it cannot read the references, so it fails and deletes nothing.
    monkeypatch.setenv("HORSE_STORE_RETRY_SECONDS", "1")
    flaky_s3.stop()
    try:
        with pytest.raises(Exception, match="Could not connect|error sending request"):
            run.store.gc(grace=0, dry_run=False)
    finally:
        flaky_s3.start()
    assert _catalog(run.store) == held

    # Back up: nothing of the run is garbage, the contact sheet included (the versions list it).
    sheet = run.store.versions.read("spring-launch")["contact_sheet_uri"]
    assert sheet == first["contact_sheets"]["spring-launch"]
    assert run.store.gc(grace=0, dry_run=False).deleted == []
    assert run.store.open_blob(sheet).read(3) == b"\xff\xd8\xff", "the contact sheet (a JPEG) is still there"


def test_store_down_mid_commit_the_run_fails_cleanly_and_a_rerun_completes(prefect_api, ray_cluster, flaky_s3, run,
                                                                           monkeypatch):
    monkeypatch.setenv("HORSE_STORE_RETRY_SECONDS", "2")  # the store stays away longer than the run waits
    commit = RenderIndex.commit

    def commit_while_down(self, *args, **kwargs):
        flaky_s3.stop()
        try:
            return commit(self, *args, **kwargs)
        finally:
            flaky_s3.start()

    monkeypatch.setattr(RenderIndex, "commit", commit_while_down)
    with pytest.raises(OSError, match="error sending request"):
        run()
    failed = _catalog(run.store)
    assert len(failed["receipts"]) == 2 and failed["index_rows"] == 0 and failed["versions"] == {}, \
        "the renders are kept as receipts; nothing was indexed or published"

    # The rerun finds the receipts and indexes them, while the store is briefly away again.
    monkeypatch.undo()
    outages = []
    read_many = Root.read_many

    def outage_while_receipts_are_read(self, keys):
        if not outages:
            outages.append(flaky_s3.outage(seconds=2))
        return read_many(self, keys)

    monkeypatch.setattr(Root, "read_many", outage_while_receipts_are_read)
    second = run()
    outages[0].join()
    assert (second["rendered"], second["cached"], second["versions"]) == (0, 2, {"spring-launch": 1})
    held = _catalog(run.store)
    assert held["receipts"] == failed["receipts"] and held["clips"] == failed["clips"] and held["renders"] == 2
    assert held["index_rows"] == 2 and len(held["versions"][1]) == 2
    assert {k for k, _, _ in held["versions"][1]} == held["indexed_keys"]
