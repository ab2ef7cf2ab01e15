"""Destination files: the shipped ones load with the standards' values; bad ones are refused in one
line naming the file, the key and the reason. Destinations on jobs: a manifest row or the run names
them, unknown names are refused, and the render key covers what they decide."""

from __future__ import annotations

import pickle
from fractions import Fraction

import pytest

from flows.destinations import load_destination, load_destinations, pick, run_destinations
from flows.manifest import read_manifest, validate_rows, write_manifest
from flows.plan import ModelInfo, expand_shot
from flows.render_stream import to_render_job
from flows.settings import ConfigError, load_settings
from horse_actors import Delivery

from .conftest import shot

MODEL = ModelInfo("f" * 64, "distill", lambda resolution, aspect: (128, 64))


def test_shipped_destinations_carry_the_standards_values():
    d = load_destinations()
    assert {"social", "broadcast-eu", "broadcast-us"} <= set(d)
    eu, us, social = d["broadcast-eu"], d["broadcast-us"], d["social"]
    assert (eu.loudness_lufs, eu.loudness_tolerance_lu, eu.true_peak_dbtp, eu.fps) == (-23.0, 0.5, -1.0, 25)
    assert (us.loudness_lufs, us.loudness_tolerance_lu, us.true_peak_dbtp, us.fps) == (-24.0, 2.0, -2.0, Fraction(30000, 1001))
    assert (social.loudness_lufs, social.true_peak_dbtp, social.fps) == (-14.0, -1.0, None)
    assert pick(d, ["social"]) == [social]


def test_a_studio_folder_adds_and_overrides_destinations(tmp_path):
    (tmp_path / "social.yaml").write_text("loudness_lufs: -16\n")
    (tmp_path / "cinema-ad.yaml").write_text("loudness_lufs: -27\ntrue_peak_dbtp: -3\n")
    d = load_destinations([tmp_path])
    assert d["social"].loudness_lufs == -16.0 and d["cinema-ad"].true_peak_dbtp == -3.0
    assert d["broadcast-eu"].loudness_lufs == -23.0


@pytest.mark.parametrize("name, text, message", [
    ("a", "loudness_lufs: -23\ntrue_peak_dbtp: 3\n", "true_peak_dbtp: must be between -20 and 0 dBTP (got 3.0)"),
    ("b", "loudness_lufs: loud\n", "loudness_lufs: Input should be a valid number"),
    ("c", "loudness_lufs: -23\nloudnes_range: 7\n", "loudnes_range: unknown key"),
    ("d", "loudness_lufs: -23\nfps: 29.97\n", "fps: must be > 0, exact (write 29.97 as 30000/1001)"),
    ("e", "true_peak_dbtp: -1\n", "loudness_lufs: Field required"),
    ("f", "loudness_lufs: -23\ncolor_range: full\n", "color_range: Input should be 'tv' or 'pc'"),
    ("g", "loudness_lufs: -23\nmax_black_seconds: -1\n", "max_black_seconds: must be >= 0 (got -1.0)"),
    ("h", "loudness_lufs: -23\nname: other\n", "name: set by the file name ('h'); remove the key"),
    ("i", "- loudness_lufs: -23\n", "top level must be a mapping of keys, got list"),
    ("j", "loudness_lufs: [-23\n", "not valid YAML"),
    ("Bad Name", "loudness_lufs: -23\n", "file name 'Bad Name' is not a destination name"),
])
def test_bad_destination_files_are_refused_with_file_key_and_reason(tmp_path, name, text, message):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_destination(path)
    assert str(refused.value).startswith(f"{path}: ") and message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_unknown_destination_names_are_refused():
    with pytest.raises(ConfigError, match="unknown destination 'tv'; known: broadcast-eu, broadcast-us, social"):
        pick(load_destinations(), ["social", "tv"])


# ---- destinations on jobs: the manifest column, the run's default, the render key ----------------

def test_a_manifest_row_names_its_destinations_and_an_unknown_one_is_a_row_error(tmp_path):
    rows = [shot("s1", "A.", destinations=["social", "broadcast-eu", "social"]), shot("s2", "B.", destinations=["tv"]),
            shot("s3", "C.", destinations=["cinema"])]
    manifest = read_manifest(str(write_manifest(rows, tmp_path / "m.parquet")))
    assert [s.destinations for s in manifest.shots] == [("social", "broadcast-eu")]
    assert [(e.row, e.column, e.reason) for e in manifest.errors] == [
        (2, "destinations", "unknown destination 'tv'; known: broadcast-eu, broadcast-us, social"),
        (3, "destinations", "unknown destination 'cinema'; known: broadcast-eu, broadcast-us, social")]
    (tmp_path / "cinema.yaml").write_text("loudness_lufs: -27\n")
    studio = read_manifest(str(tmp_path / "m.parquet"), destinations=load_destinations([tmp_path]))
    assert [s.shot_id for s in studio.shots] == ["s1", "s3"], "a studio's own destination is a known name"


def test_an_unknown_run_default_is_a_config_error_naming_the_key(tmp_store):
    with pytest.raises(ConfigError) as refused:
        run_destinations(load_settings(store_url=tmp_store, render={"destinations": ["social", "tv"]}))
    assert str(refused.value) == "render.destinations: unknown destination 'tv'; known: broadcast-eu, broadcast-us, social"


def test_the_render_key_covers_the_destinations_and_the_reroll_policy(tmp_path, tmp_store):
    row = shot("s1", "A horse on a beach.", languages=["en"], aspect_ratios=["16:9"])
    [plain] = expand_shot(validated(row), MODEL)

    def key(row: dict, folders=(), **render) -> str:
        settings = load_settings(store_url=tmp_store, render={"destination_folders": [str(f) for f in folders], **render})
        [job] = expand_shot(validated(row), MODEL, destinations=run_destinations(settings))
        return job.render_key

    assert key(row) == plain.render_key, "without destinations the key is what it was before delivery QC"
    eu = {**row, "destinations": ["broadcast-eu"]}
    assert key(eu) != plain.render_key and key(eu) == key(eu)
    assert key(row, destinations=["broadcast-eu"]) == key(eu), "the run's default and the row's own list are one input"
    assert key(eu, max_rerolls=2) != key(eu), "the re-roll count decides which seed is delivered"
    (tmp_path / "broadcast-eu.yaml").write_text("loudness_lufs: -23\nmax_black_seconds: 0.2\n")
    assert key(eu, [tmp_path]) != key(eu), "so do the picture limits that trigger a re-roll"

    [job] = expand_shot(validated(eu), MODEL, destinations=run_destinations(load_settings(store_url=tmp_store)))
    sent = pickle.loads(pickle.dumps(to_render_job(job, MODEL.fingerprint)))
    assert sent.delivery == Delivery(tuple(load_destinations()[n] for n in ["broadcast-eu"]), 1, True)


def validated(row: dict):
    [one], errors = validate_rows([row])
    assert not errors
    return one
