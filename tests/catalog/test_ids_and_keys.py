import math

import pytest

from catalog import InvalidId, render_key, render_key_grid, safe_key, validate_id
from catalog.render_keys import canonical_json

from catalog_testlib import make_receipt

BAD_IDS = {
    "../x": "path separators",
    "a/b": "path separators",
    "..": "'..'",
    "ÄBC": "ASCII",
    "a" * 200: "200 characters",
    "a\x00b": "NUL",
    "s3://other/x": "URI",
    "": "empty",
    "Abc": "must match",
    "-x": "must match",
    "a b": "must match",
    "x\n": "must match",
}


@pytest.mark.parametrize("value,reason", BAD_IDS.items(), ids=range(len(BAD_IDS)))
def test_bad_ids_are_refused_with_field_value_and_reason(value, reason):
    with pytest.raises(InvalidId) as err:
        validate_id(value, field="shot_id")
    msg = str(err.value)
    assert "shot_id" in msg and reason in msg
    assert err.value.field == "shot_id" and err.value.value == value
    assert len(msg) < 300  # the 200-character value is truncated


@pytest.mark.parametrize("value", ["a", "shot-001", "en-16x9-t1", "c.2026_q1", "0" * 64])
def test_good_ids_pass(value):
    assert validate_id(value, "campaign_id") == value


def test_non_string_id_refused():
    with pytest.raises(InvalidId, match="must be a string"):
        validate_id(7, "campaign_id")


@pytest.mark.parametrize("parts", [("..",), ("a/../b",), ("/abs",), ("a//b",), ("a\\b",), ("s3://x",), (".hidden",)])
def test_safe_key_refuses_traversal(parts):
    with pytest.raises(InvalidId):
        safe_key(*parts)


def test_render_key_is_canonical():
    a = render_key({"prompt": "Café", "seconds": 5.0, "size": [1280, 720], "seed": 3})
    b = render_key({"seed": 3, "size": (1280, 720), "seconds": 5, "prompt": "Cafe\u0301"})
    assert a == b and len(a) == 64
    assert render_key({"seed": 4}) != render_key({"seed": 3})
    assert render_key({"x": 0.1}) != render_key({"x": 0.10000000000000002})
    assert canonical_json({"b": 1, "a": "ü"}) == '{"a":"ü","b":1}'.encode()


def variant_render_keys(shared: dict, variants: list[dict]) -> list[str]:
    """The key grid with one row that adds nothing: a key per variant."""
    return render_key_grid(shared, [{}], variants)[0]


def test_variant_keys_are_the_keys_of_the_merged_inputs():
    """The planner's fast path cuts the canonical JSON around the per-variant values: the same keys."""
    shared = {"prompt": "Cafe\u0301 \"quoted\"\n\t🐴", "seconds": 5.0, "rate": 0.1, "refs": [None, True, {"z": 1, "a": [2.0]}],
              "model": "f" * 64, "zz_last": None}
    variants = [{"aspect": aspect, "seed": seed, "b_between": 1.5, "\u00e9": "x"} for aspect in ("16:9", "Ü") for seed in (0, 2**31)]
    keys = variant_render_keys(shared, variants)
    assert keys == [render_key({**shared, **variant}) for variant in variants] and len(set(keys)) == 4
    # Plain int/ASCII variants skip the canonical pass; a bool or non-NFC text must not.
    plain = [{"aspect": "16:9", "seed": 7}, {"aspect": "9:16", "seed": True}, {"aspect": "Cafe\u0301", "seed": 1},
             {"aspect": "50%s %d%%", "seed": 2}]
    assert variant_render_keys(shared, plain) == [render_key({**shared, **variant}) for variant in plain]
    percent = {**shared, "prompt": "100% %s of %(x)s", "%d": "%%"}  # the text is filled in with %-formatting
    assert variant_render_keys(percent, plain) == [render_key({**percent, **variant}) for variant in plain]
    assert variant_render_keys({}, plain) == [render_key(variant) for variant in plain]
    for bad in ({"aspect": "1:1", "seed": 1, "b_between": 1, "\u00e9": "x", "model": "g"}, {"aspect": "1:1"}):
        with pytest.raises(ValueError, match="every variant names"):
            variant_render_keys(shared, [variants[0], bad])
    with pytest.raises(ValueError):
        variant_render_keys(shared, [{"seconds": 1}])


def test_key_grid_keeps_shared_texts_only_for_inputs_that_write_the_same():
    """A shot's shared text is kept for the next calls: values equal in Python but written apart
    (True and 1, 5.0 and 5.5 are not, -0.0 and 0 are) never reuse another's text."""
    variants = [{"aspect_ratio": aspect, "seed": seed} for aspect in ("16:9", "9:16%s") for seed in (1, 2**31)]
    rows = [{"prompt": "Cafe\u0301 100% %s", "language": "ja"}, {"prompt": "夜 %(x)s", "language": "en", "gate": {"a": [1.0]}}]
    shared_inputs = [{"seconds": 5.0, "flag": True, "ref": None}, {"seconds": 5.5, "flag": False, "ref": None},
                     {"seconds": 5, "flag": 1, "ref": None},
                     {"seconds": 5.5, "flag": 1.0, "ref": None}, {"seconds": -0.0, "flag": False, "ref": "%d"},
                     {"seconds": 0, "flag": 0, "ref": "e\u0301"}, {"seconds": 5.0, "flag": True, "ref": None, "adapter": {"s": 0.5}}]
    for shared in shared_inputs * 2:  # the second round from kept texts
        assert render_key_grid(shared, rows, variants) == [[render_key({**shared, **row, **variant}) for variant in variants]
                                                           for row in rows]
    assert render_key_grid({"a": 1}, [], variants) == [] and render_key_grid({"a": 1}, [{}], []) == [[]]
    with pytest.raises(ValueError, match="nothing shared or per row"):
        render_key_grid({"a": 1}, [{"a": 2}], variants)


@pytest.mark.parametrize("bad", [{"x": math.nan}, {"x": math.inf}, {"x": b"raw"}, {1: "a"}, {"x": object()}])
def test_render_key_refuses_ambiguous_inputs(bad):
    with pytest.raises((TypeError, ValueError)):
        render_key(bad)


def _all_objects(store):
    return sorted(store.root.list_files(""))


def test_bad_ids_write_nothing_anywhere(store):
    good = make_receipt(store, "camp", "shot-1", "en-16x9-t1")
    before = _all_objects(store)
    for bad in BAD_IDS:
        for field in ("campaign_id", "shot_id", "variant"):
            with pytest.raises(InvalidId) as err:
                store.write_receipt({**good, field: bad})
            assert err.value.field == field
            with pytest.raises(InvalidId):
                store.index.commit([good, {**good, field: bad}])
        with pytest.raises(InvalidId):
            store.versions.publish(bad, [], None, None, "fp", "code", "run")
        entry = {"shot_id": bad, "variant": "v", "render_key": good["render_key"], "status": "ok",
                 "blob_uri": good["blob_uri"], "sha256": good["sha256"]}
        with pytest.raises(InvalidId):
            store.versions.publish("camp", [entry], None, None, "fp", "code", "run")
        with pytest.raises(InvalidId):
            store.versions.read(bad)
    # A foreign or traversing blob URI is refused as well.
    for uri in ("s3://other/x", good["blob_uri"].replace("blobs/sha256", "blobs/../x"), "/etc/passwd"):
        with pytest.raises(InvalidId):
            store.write_receipt({**good, "blob_uri": uri})
        with pytest.raises(InvalidId):
            store.open_blob(uri)
    with pytest.raises(InvalidId):
        store.put_blob(b"x", ext="../mp4")
    assert _all_objects(store) == before
    assert store.index.version() is None  # the table was never even created


def test_catalog_imports_no_torch_ray_or_prefect():
    import subprocess
    import sys

    code = ("import sys, catalog; from catalog import Store; Store('memory://layer-check')"
            "; print(sorted({'torch', 'ray', 'prefect'} & {m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
