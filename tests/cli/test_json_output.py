"""`--json`: exactly one JSON document on stdout and a clean exit code, in fresh processes, every
time (issue 11 item 1: an abort at interpreter exit after the document, Ray's lines before it)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from catalog import Store
from flows.cli.command import write_json
from flows.dry_run import JobRows
from flows.manifest import parse_manifest
from tests.cli.cli_testlib import config_file, horse, manifest, one_json_document

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


@pytest.mark.slow
def test_a_listing_made_as_it_is_read_is_written_as_the_same_json(tmp_path):
    """`horse plan --json` writes its job rows one by one (flows.dry_run.JobRows): the document
    reads back as the one json.dumps would write, and one without such a listing is written
    byte for byte as json.dumps writes it."""
    made = []
    rows = JobRows(list(range(3)), lambda n: made.append(n) or {"n": n, "name": f"job {n}\nnext", "cached": n == 1})
    document = {"ok": True, "plan": rows, "empty": JobRows([], dict), "quote": {"stages": [{"a": 1.5}]}, "warnings": []}
    out = io.StringIO()
    write_json(document, out)
    assert json.loads(out.getvalue()) == {**document, "plan": list(rows), "empty": []}
    assert made == [0, 1, 2, 0, 1, 2], "rows are made as they are written (and again when read again)"
    plain = {"ok": True, "quote": {"stages": [{"a": 1.5}]}, "rows": [1, 2]}
    out = io.StringIO()
    write_json(plain, out)
    assert out.getvalue() == json.dumps(plain, indent=2) + "\n"


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


def render_actor_processes(root: psutil.Process) -> list[psutil.Process]:
    """RenderActor workers of the Ray cluster this `horse` process started (not anyone else's)."""
    found = []
    for process in root.children(recursive=True):
        try:
            if "RenderActor" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            pass
    return found


@pytest.mark.slow
def test_render_json_is_one_document_when_an_actor_is_killed_mid_run(tmp_path, tmp_store, prefect_api):
    path = manifest(tmp_path / "m.parquet", shots=4, aspect_ratios=["16:9", "9:16"])
    config = config_file(tmp_path, "ray: {cpu_mode: true, num_actors: 2, job_deadline_s: 300, max_retries: 2}\n"
                                   "render: {chunk_size: 2}\n")
    receipts = Path(tmp_store.removeprefix("file://")) / "receipts"
    with open(tmp_path / "stdout", "w+") as stdout, open(tmp_path / "stderr", "w+") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "flows.cli", "render", str(path), "--json", "--store", tmp_store,
                                    "--config", config], stdout=stdout, stderr=stderr)
        try:
            deadline = time.monotonic() + 600
            while not list(receipts.rglob("*.json")) and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            actors = render_actor_processes(psutil.Process(process.pid))
            done_before_kill = len(list(receipts.rglob("*.json")))
            assert actors and done_before_kill < 8, "the kill lands mid-run"
            actors[0].kill()
            process.wait(timeout=600)
        finally:
            if process.poll() is None:
                process.kill()
        stdout.seek(0), stderr.seek(0)
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout.read(), stderr.read())
    document = one_json_document(result)
    assert result.returncode == 0, (document, result.stderr[-3000:])
    assert document["rendered"] + document["cached"] == 8 and document["failed"] == 0
    assert "worker died" in result.stderr.lower(), "Ray reported the killed worker, on stderr"

    again = horse("backfill", "cli-spring", "--json", "--store", tmp_store, "--config", config)
    document = one_json_document(again)
    assert again.returncode == 0 and (document["rendered"], document["cached"]) == (0, 8)
