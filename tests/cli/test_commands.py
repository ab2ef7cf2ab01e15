"""The `horse` package: both entry points, the dry run, and one error contract for every group."""

from __future__ import annotations

import re
from importlib.metadata import entry_points

import pytest

from flows.settings import load_settings
from tests.cli.cli_testlib import horse, manifest, one_json_document

COMMANDS = ("demo", "manifest", "plan", "render", "backfill", "versions", "show", "qc", "deploy", "serve", "ui", "doctor")


def test_console_script_and_python_m_run_the_same_app():
    [script] = entry_points(group="console_scripts", name="horse")
    assert script.value == "flows.cli:app"
    from flows.cli import app

    assert script.load() is app
    listed = horse("--help")
    assert listed.returncode == 0, listed.stderr
    for command in COMMANDS:
        assert re.search(rf"│ {command}\s", listed.stdout), f"{command} is listed"
    assert horse("manifest", "--help").returncode == 0


@pytest.mark.slow
def test_plan_is_a_dry_run_with_a_quote(tmp_path, tmp_store):
    path = manifest(tmp_path / "m.parquet", shots=3, languages=["en", "de"], aspect_ratios=["16:9", "9:16"])
    result = horse("plan", str(path), "--json", "--store", tmp_store)
    document = one_json_document(result)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (document["jobs"], document["cached"], document["to_render"]) == (12, 0, 12)
    # No history yet: the configured per-stage figures of a 256p render (base, decode, encode) per clip-second.
    configured = load_settings().cost.configured
    per_clip_second = sum(configured.seconds[k] for k in ("base", "decode_256p", "encode_256p")) / configured.clip_seconds
    assert document["gpu_seconds_quote"] == round(12 * per_clip_second, 1) and "from configuration" in document["quote_basis"]
    assert document["ok"] is True and document["row_errors"] == []
    assert {(job["shot_id"], job["variant"]) for job in document["plan"]} == {
        (f"s0{i}", f"{lang}-{aspect}-t1") for i in (1, 2, 3) for lang in ("en", "de") for aspect in ("16x9", "9x16")}
    assert not any(job["cached"] for job in document["plan"])

    human = horse("plan", str(path), "--store", tmp_store)
    assert human.returncode == 0 and "12 jobs: 0 already rendered, 12 to render" in human.stdout

    outside = manifest(tmp_path / "outside.parquet", shots=1, reference_image_uri="/etc/hostname")
    refused = horse("plan", str(outside), "--json", "--store", tmp_store)
    document = one_json_document(refused)
    assert refused.returncode == 1 and document["jobs"] == 0
    assert "reference_image_uri: /etc/hostname is outside the allowed input roots" in document["row_errors"][0]


@pytest.mark.slow
def test_invalid_input_is_one_line_and_exit_2_in_every_group(tmp_path, tmp_store, prefect_api):
    missing = str(tmp_path / "missing.parquet")
    human = horse("manifest", "validate", missing)
    assert human.returncode == 2 and human.stdout == ""
    assert human.stderr.strip().splitlines() == [f"error: manifest {missing}: no such file"]

    uncaptioned = tmp_path / "clips"
    uncaptioned.mkdir()
    (uncaptioned / "take1.mp4").write_bytes(b"")
    for args, reason in ((("plan", missing), "no such file"), (("show", "../etc"), "invalid campaign_id"),
                         (("backfill", "never-rendered"), "has no published version to backfill"),
                         (("adapter", "train", "Acme", "--clips", str(uncaptioned)), "invalid brand 'Acme'"),
                         (("adapter", "train", "acme", "--clips", str(uncaptioned)), "no caption file for take1.mp4"),
                         (("adapter", "train", "acme", "--clips", missing), "neither a folder of clips nor")):
        result = horse(*args, "--json", "--store", tmp_store)
        document = one_json_document(result)
        assert result.returncode == 2 and document["ok"] is False, (args, result.stderr[-2000:])
        assert reason in document["error"] and "\n" not in document["error"]
