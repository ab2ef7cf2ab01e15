"""`--json`: exactly one JSON document on stdout and a clean exit code, in fresh processes, every
time (issue 11 item 1: an abort at interpreter exit after the document, Ray's lines before it)."""

from __future__ import annotations

import hashlib
import sys

import pytest

from catalog import Store
from flows.manifest import parse_manifest
from tests.cli.cli_testlib import horse, manifest, one_json_document

RUNS = 3  # fresh processes per light command


def test_arrow_keeps_no_python_memory_after_a_manifest_is_read(tmp_path):
    """The root of `manifest validate --json` exiting 134: Arrow's IO threads dropped the last
    reference to Python-owned manifest bytes after `read_table` returned, and needed the GIL to
    do it while the interpreter was exiting. With the GIL held on return (a long switch interval),
    any reference Arrow still has to the bytes shows in their reference count."""
    data = manifest(tmp_path / "m.parquet").read_bytes()
    baseline = sys.getrefcount(data)
    interval = sys.getswitchinterval()
    held = []
    sys.setswitchinterval(100)
    try:
        for _ in range(50):
            parsed = parse_manifest(data, "m.parquet")
            held.append(sys.getrefcount(data) - baseline - 1)  # -1: the Manifest keeps its bytes
            del parsed
    finally:
        sys.setswitchinterval(interval)
    assert held == [0] * 50


def test_light_json_commands_print_one_document_and_exit_cleanly(tmp_path, tmp_store):
    valid = manifest(tmp_path / "valid.parquet")
    brief = tmp_path / "brief.yaml"
    brief.write_text("- {campaign_id: cli-spring, shot_id: b1, scene: A kite over a beach., languages: [en], "
                     "aspect_ratios: ['16:9'], resolution: 256p, duration_s: 1.0, takes: 1, seed: 4}\n")
    store = Store(tmp_store)
    blob = store.put_blob(b"clip")
    store.versions.publish("cli-spring", [{"shot_id": "s01", "variant": "en-16x9-t1", "status": "ok",
                                           "render_key": hashlib.sha256(b"clip").hexdigest(),
                                           "blob_uri": blob.uri, "sha256": blob.sha256}], run_id="r1")
    commands = [
        (("manifest", "validate", str(valid)), 0),
        (("manifest", "build", str(brief), "-o", str(tmp_path / "built.parquet")), 0),
        (("versions", "cli-spring", "--store", tmp_store), 0),
        (("show", "cli-spring", "--store", tmp_store), 0),
        (("doctor", "--config", str(tmp_path / "missing.yaml")), 2),
    ]
    for args, expected in commands:
        for _ in range(RUNS):
            result = horse(*args, "--json")
            assert result.returncode == expected, (args, result.returncode, result.stderr[-2000:])
            assert one_json_document(result)["ok"] is (expected == 0)
