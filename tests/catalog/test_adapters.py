"""Brand adapters in the catalog: blobs registered by brand and version, resolved by name, read
through a node cache, kept by GC."""

from __future__ import annotations

import hashlib

import pytest

from catalog import InvalidId, UnknownAdapter

CONFIG = {"format": "horse-lora/1", "rank": 4, "alpha": 4.0, "stage": "distill", "base_fingerprint": "a" * 64,
          "targets": ["linear_qkv"], "layers": None}


def test_register_resolve_fetch_round_trip(store, tmp_path):
    adapters = store.adapters
    first = adapters.register("acme", b"weights v1", CONFIG, run_id="r1", training={"clips": ["c" * 64]})
    assert first["name"] == "acme@1" and first["sha256"] == hashlib.sha256(b"weights v1").hexdigest()
    assert adapters.register("acme", b"weights v1", CONFIG) == first          # a retried flow adds no version
    second = adapters.register("acme", b"weights v2", CONFIG)
    adapters.register("zest", b"weights z", CONFIG)

    assert second["version"] == 2 and adapters.resolve("acme") == second and adapters.resolve("acme@1") == first
    assert adapters.names() == {"acme", "acme@1", "acme@2", "zest", "zest@1"}
    assert [r["name"] for r in adapters.list()] == ["acme@1", "acme@2", "zest@1"]
    assert first["config"] == CONFIG and first["training"] == {"clips": ["c" * 64]}

    cached = adapters.fetch(first["sha256"], tmp_path / "cache")
    assert cached.read_bytes() == b"weights v1"
    assert adapters.fetch(first["sha256"], tmp_path / "cache") == cached
    assert store.gc(grace=0, dry_run=True).deleted == []                     # registered blobs are referenced

    with pytest.raises(UnknownAdapter, match=r"unknown adapter 'acme@3' \(known: acme, acme@1, acme@2, zest, zest@1\)"):
        adapters.resolve("acme@3")
    with pytest.raises(InvalidId, match="adapter"):
        adapters.resolve("../etc")


def test_gc_keeps_the_training_encodings_a_registered_adapter_names(store):
    """Clip encodings are stage results: past their retention GC collects them, unless a registered
    adapter names them in its training lineage (then record and blob stay)."""
    from datetime import datetime, timedelta, timezone

    named = store.stage_results.put("1" * 64, "encoding", b"encoding of a clip the adapter trained on")
    unnamed = store.stage_results.put("2" * 64, "encoding", b"encoding of a run that never registered")
    store.adapters.register("acme", b"weights", CONFIG, training={"clips": [
        {"uri": "clip-uri", "sha256": "c" * 64, "caption": "A field.", "encoding_uri": named.blob_uri}]})

    later = datetime.now(timezone.utc) + timedelta(days=365)
    report = store.gc(grace=0, dry_run=False, now=later)
    assert report.expired_stage_results == ["2" * 64] and report.deleted == [unnamed.blob_uri]
    assert store.stage_results.existing(["1" * 64, "2" * 64]).keys() == {"1" * 64}
    assert store.stage_results.load(named) == b"encoding of a clip the adapter trained on"
