"""Destination files: the shipped ones load with the standards' values; bad ones are refused in one
line naming the file, the key and the reason."""

from __future__ import annotations

from fractions import Fraction

import pytest

from flows.destinations import load_destination, load_destinations, pick
from flows.settings import ConfigError


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
