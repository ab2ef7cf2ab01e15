"""`horse qc`: any mp4 measured and checked, a campaign version's stored results read back; exit 1
when something failed, 2 (one line) for a destination that does not exist or a bad destination file."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from catalog import Store
from flows.destinations import load_destinations
from media import encode_mp4
from media.master import make_master
from tests.cli.cli_testlib import config_file, horse, one_json_document

pytestmark = pytest.mark.slow


def write_clip(path, seconds: float = 2.0) -> str:
    """A moving gradient with a 1 kHz tone at -20 dBFS: never black or frozen, too loud for broadcast."""
    count = round(25 * seconds)
    y, x = np.mgrid[0:64, 0:96]
    frames = np.stack([((x + 5 * i) * 2 + y) % 200 + 40 for i in range(count)]).astype(np.uint8)
    t = np.arange(round(48_000 * seconds)) / 48_000
    tone = (0.1 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    encode_mp4(SimpleNamespace(frames=np.repeat(frames[..., None], 3, -1), audio=np.stack([tone, tone]), fps=25,
                               sample_rate=48_000), path)
    return str(path)


def test_qc_of_any_mp4_measures_and_checks_it(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4")
    result = horse("qc", clip, "--destination", "broadcast-eu", "--seconds", "2", "--json")
    document = one_json_document(result)
    assert result.returncode == 1 and document["ok"] is False
    assert list(document["destinations"]) == ["broadcast-eu"]
    checks = {c["name"]: c for c in document["destinations"]["broadcast-eu"]["checks"]}
    assert not checks["loudness"]["passed"] and checks["loudness"]["measured"] > -23.5
    assert checks["black"]["passed"] and checks["duration"]["measured"] == 50
    assert document["measurements"]["video"]["frames"] == 50

    master, report = make_master(clip, load_destinations()["broadcast-eu"], tmp_path / "eu.mov", brief_seconds=2.0)
    assert report.passed
    passed = horse("qc", str(tmp_path / "eu.mov"), "-d", "broadcast-eu", "--seconds", "2", "--json")
    assert passed.returncode == 0 and one_json_document(passed)["ok"] is True
    every = horse("qc", str(tmp_path / "eu.mov"))
    assert every.returncode == 1, "without --destination a file is checked against every destination (social's -14 fails)"
    assert all(name in every.stdout for name in ("broadcast-eu", "broadcast-us", "social"))


def test_qc_of_a_campaign_reads_the_stored_results(tmp_path, tmp_store):
    store = Store(tmp_store)
    clip = store.put_blob(b"clip", "mp4")

    def entry(shot: str, **qc) -> dict:
        return {"shot_id": shot, "variant": "en-16x9-t1", "render_key": f"{ord(shot[-1]):064x}", "status": "ok",
                "blob_uri": clip.uri, "sha256": clip.sha256, "seed": 5, "rendered_seed": 5, **({"qc": qc} if qc else {})}

    def result(passed: bool, lufs: float) -> dict:
        return {"passed": passed, "master_uri": clip.uri, "master_sha256": clip.sha256,
                "checks": {"loudness": {"passed": passed, "measured": lufs, "limit": "-23.0 ± 0.5 LUFS"}}}

    store.versions.publish("spot", [entry("s1", **{"broadcast-eu": result(True, -23.0)}),
                                    entry("s2", **{"broadcast-eu": result(False, -19.5), "social": result(True, -14.0)}),
                                    entry("s3")])
    every = horse("qc", "spot", "--json", "--store", tmp_store)
    document = one_json_document(every)
    assert every.returncode == 1 and document["version"] == 1
    assert (document["passed"], document["failed"], document["not_checked"]) == (2, 1, 1)
    [failed] = [c for c in document["clips"] if c["status"] == "failed"]
    assert (failed["shot_id"], failed["destination"]) == ("s2", "broadcast-eu")
    assert failed["failed_checks"] == {"loudness": {"passed": False, "measured": -19.5, "limit": "-23.0 ± 0.5 LUFS"}}

    social = horse("qc", "spot", "-d", "social", "--version", "1", "--json", "--store", tmp_store)
    document = one_json_document(social)
    assert [(c["shot_id"], c["status"]) for c in document["clips"]] == [
        ("s1", "not checked"), ("s2", "passed"), ("s3", "not checked")]
    assert social.returncode == 1, "a clip never checked against the destination asked for is not a pass"


def test_unknown_destinations_and_bad_destination_files_exit_2_with_one_line(tmp_path, tmp_store):
    clip = str(tmp_path / "clip.mp4")
    unknown = horse("qc", clip, "-d", "social,tv", "--store", tmp_store)
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert unknown.stderr.strip().splitlines() == [
        "error: unknown destination 'tv'; known: broadcast-eu, broadcast-us, social"]

    studio = tmp_path / "studio-destinations"
    studio.mkdir()
    (studio / "cinema.yaml").write_text("loudness_lufs: -27\ntrue_peak_dbtp: 3\n")
    config = config_file(tmp_path, f"render: {{destination_folders: [{studio}]}}\n")
    bad = horse("qc", "spot", "--config", config, "--store", tmp_store)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"error: {studio / 'cinema.yaml'}: true_peak_dbtp: must be between -20 and 0 dBTP (got 3.0)"]

    missing = horse("qc", "never-rendered", "--json", "--store", tmp_store)
    assert missing.returncode == 2 and "has no published versions" in one_json_document(missing)["error"]


def test_qc_of_a_campaign_fails_on_a_failed_dialogue_gate_and_lists_unchecked_lines(tmp_store):
    from flows.cli.qc import stored_results
    from flows.settings import load_settings

    store = Store(tmp_store)
    clip = store.put_blob(b"clip", "mp4")

    def entry(shot: str, status: str) -> dict:
        heard = {"status": status, "reason": "WER 1.00 over 0.20", "transcript": "the weather"}
        return {"shot_id": shot, "variant": "en-16x9-t1", "render_key": f"{ord(shot[-1]):064x}", "status": "ok",
                "blob_uri": clip.uri, "sha256": clip.sha256, "seed": 5, "dialogue_status": status, "dialogue": heard,
                "qc": {"social": {"passed": True, "master_uri": clip.uri, "master_sha256": clip.sha256, "checks": {}}}}

    store.versions.publish("spot", [entry("s1", "passed"), entry("s2", "unchecked")])
    settings = load_settings(store_url=tmp_store)
    document = stored_results(settings, "spot", None, []).document
    assert document["ok"] is True and document["dialogue_unchecked"] == 1, "unchecked is listed, not failed"
    store.versions.publish("spot", [entry("s1", "passed"), entry("s2", "unchecked"), entry("s3", "dialogue_failed")])
    document = stored_results(settings, "spot", None, []).document
    assert document["ok"] is False, "a clip that failed the dialogue gate fails horse qc"
    assert (document["dialogue_passed"], document["dialogue_failed"], document["dialogue_unchecked"]) == (1, 1, 1)
    [failed] = [c for c in document["clips"] if c["dialogue_status"] == "dialogue_failed"]
    assert failed["shot_id"] == "s3" and failed["dialogue"]["transcript"] == "the weather"
