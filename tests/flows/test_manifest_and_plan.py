"""Manifest intake and planning as plain functions: no Ray, no Prefect."""

from __future__ import annotations

import gc
import io
import json
import subprocess
import sys
import weakref

import pytest
from PIL import Image

from catalog import Store
from flows.briefs import build_manifest
from flows.manifest import ManifestError, gc_paused, read_manifest, write_manifest
from flows.plan import Filters, ModelInfo, PlanError, expand_shot, make_plan, take_seed
from media import contact_sheet

from .conftest import shot

MODEL = ModelInfo("f" * 64, "distill", lambda resolution, aspect: (128, 64) if aspect == "16:9" else (64, 128))


def test_yaml_brief_with_defaults_builds_a_valid_manifest(tmp_path):
    brief = tmp_path / "brief.yaml"
    brief.write_text(
        "campaign_id: autumn\nresolution: 256p\nduration_s: 2\ntakes: 2\naspect_ratios: ['16:9']\n"
        "shots:\n"
        "  - {shot_id: a1, seed: 1, scene: 'A red leaf falls.', languages: [en]}\n"
        "  - {shot_id: a2, seed: 2, scene: 'Rain on a window.', languages: [zh-CN], "
        "dialogue: [{speaker: girl, language: cmn, line: '下雨了'}]}\n"
        "  - {shot_id: A3, seed: 3, scene: 'Bad id.', languages: [en]}\n"
    )
    manifest, path = build_manifest(brief, tmp_path / "autumn.parquet")
    assert [s.shot_id for s in manifest.shots] == ["a1", "a2"]
    assert manifest.shots[1].languages == ("zh",) and manifest.shots[1].dialogue[0].language == "zh"
    assert [str(e) for e in manifest.errors] == [
        "row 3 (shot A3), column shot_id: invalid shot_id 'A3': must match ^[a-z0-9][a-z0-9._-]{0,63}$: "
        "lowercase ASCII letters, digits, '.', '_' and '-', starting with a letter or digit"
    ]
    again = read_manifest(str(path))
    assert [s.shot_id for s in again.shots] == ["a1", "a2"] and not again.errors


def test_csv_brief_and_the_cli_report_rows(tmp_path):
    brief = tmp_path / "brief.csv"
    brief.write_text(
        "campaign_id,shot_id,scene,languages,aspect_ratios,resolution,duration_s,takes,seed,dialogue\n"
        "winter,w1,Snow falls on a quiet street.,en,16:9;9:16,256p,2,1,5,\n"
        "winter,w2,A skier turns.,en;de,16:9,256p,20,1,6,\"[{\"\"speaker\"\": \"\"skier\"\", \"\"language\"\": \"\"en\"\", \"\"line\"\": \"\"Go!\"\"}]\"\n"
    )
    out = tmp_path / "winter.parquet"
    result = subprocess.run([sys.executable, "-m", "flows.cli", "manifest", "build", str(brief), "-o", str(out), "--json"],
                            capture_output=True, text=True)
    document = json.loads(result.stdout)
    assert result.returncode == 1 and document["valid"] == 1
    reasons = {(e["row"], e["column"]) for e in document["errors"]}
    assert reasons == {(2, "duration_s")}, document["errors"]
    validate = subprocess.run([sys.executable, "-m", "flows.cli", "manifest", "validate", str(out)], capture_output=True, text=True)
    assert validate.returncode == 0 and "1 valid" in validate.stdout


def test_unreadable_manifests_are_errors_for_the_whole_file(tmp_path):
    with pytest.raises(ManifestError, match="no such file"):
        read_manifest(str(tmp_path / "missing.parquet"))
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(ManifestError, match="not a Parquet file"):
        read_manifest(str(tmp_path / "text.parquet"))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"campaign_id": ["x"]}), tmp_path / "thin.parquet")
    with pytest.raises(ManifestError, match="missing required column"):
        read_manifest(str(tmp_path / "thin.parquet"))


def test_unknown_columns_are_kept_for_lineage(tmp_path):
    path = write_manifest([shot("s1", "A scene.", client_ref="PO-4411")], tmp_path / "m.parquet")
    assert read_manifest(str(path)).shots[0].extra == {"client_ref": "PO-4411"}


def test_variants_keys_and_seeds(tmp_path):
    manifest = read_manifest(str(write_manifest([shot("s1", "A scene.", takes=2)], tmp_path / "m.parquet")))
    jobs = expand_shot(manifest.shots[0], MODEL)
    assert [j.variant for j in jobs] == ["en-16x9-t1", "en-16x9-t2", "en-9x16-t1", "en-9x16-t2",
                                         "de-16x9-t1", "de-16x9-t2", "de-9x16-t1", "de-9x16-t2"]
    assert len({j.render_key for j in jobs}) == 8
    assert {j.seed for j in jobs if j.take == 1} == {7}, "take 1 keeps the manifest seed in every variant"
    assert {j.seed for j in jobs if j.take == 2} == {take_seed(7, 2)} and take_seed(7, 2) != 7
    assert 'Dialogue:\n<young woman in a yellow raincoat, German>: "Der Frühling ist da."' in jobs[4].prompt
    again = expand_shot(manifest.shots[0], MODEL)
    assert [j.render_key for j in again] == [j.render_key for j in jobs], "keys are deterministic"
    other_model = ModelInfo("e" * 64, "distill", MODEL.sizes)
    assert not {j.render_key for j in expand_shot(manifest.shots[0], other_model)} & {j.render_key for j in jobs}
    backfill = expand_shot(manifest.shots[0], MODEL, Filters(languages=("ja",), takes=1))
    assert [j.variant for j in backfill] == ["ja-16x9-t1", "ja-9x16-t1"]
    with pytest.raises(PlanError, match="no dialogue lines for fr"):
        expand_shot(manifest.shots[0], MODEL, Filters(languages=("fr",)))


def test_reference_files_only_from_input_roots(tmp_path, tmp_store):
    inside = tmp_path / "refs" / "face.png"
    inside.parent.mkdir()
    Image.new("RGB", (8, 8)).save(inside)
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (8, 8)).save(outside)
    rows = [shot("s1", "A.", reference_image_uri=str(inside)), shot("s2", "B.", reference_image_uri=str(tmp_path / "refs" / ".." / "elsewhere.png"))]
    # Intake is the one validator of reference files: what it refuses never reaches the plan.
    manifest = read_manifest(str(write_manifest(rows, tmp_path / "m.parquet")), input_roots=[str(tmp_path / "refs")])
    plan = make_plan(manifest.shots, MODEL, Store(tmp_store))
    assert {j.shot_id for j in plan.jobs} == {"s1"} and plan.jobs[0].key_inputs["image_sha256"]
    errors = [str(e) for e in manifest.errors]
    assert len(errors) == 1 and "row 2 (shot s2), column reference_image_uri:" in errors[0] and "outside the allowed input roots" in errors[0]


def horse_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=300)


def test_validate_refuses_what_plan_refuses(tmp_path, tmp_store):
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.new("RGB", (8, 8)).save(refs / "face.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    rows = [shot("s1", "A.", reference_image_uri=str(refs / "face.png")),
            shot("s2", "B.", reference_image_uri=str(tmp_path / "outside.png")),
            shot("s3", "C.", reference_audio_uri=str(refs / "missing.wav"))]
    manifest = str(write_manifest(rows, tmp_path / "m.parquet"))
    config = tmp_path / "horse.yaml"
    config.write_text(f"render: {{input_roots: ['{refs}']}}\n")

    validated = horse_cli("manifest", "validate", manifest, "--json", "--config", str(config))
    document = json.loads(validated.stdout)
    assert validated.returncode == 1 and document["valid"] == 1
    assert [(e["row"], e["column"]) for e in document["errors"]] == [(2, "reference_image_uri"), (3, "reference_audio_uri")]
    assert "outside the allowed input roots" in document["errors"][0]["reason"]
    assert "does not exist" in document["errors"][1]["reason"]

    planned = json.loads(horse_cli("plan", manifest, "--json", "--config", str(config), "--store", tmp_store).stdout)
    assert {job["shot_id"] for job in planned["plan"]} == {"s1"}
    assert planned["row_errors"] == [f"row {e['row']} (shot {e['shot_id']}), column {e['column']}: {e['reason']}"
                                     for e in document["errors"]], "one validator: the same rows, the same reasons"


def test_a_shot_without_dialogue_has_no_language_axis(tmp_path):
    rows = [shot("b1", "Rain runs down a window.", dialogue=[], languages=[]),
            shot("b2", "Steam rises from a cup.", dialogue=[], languages=None, aspect_ratios=["1:1"]),
            shot("d1", "A woman speaks.", languages=[])]
    manifest = read_manifest(str(write_manifest(rows, tmp_path / "m.parquet")))
    assert [s.shot_id for s in manifest.shots] == ["b1", "b2"]
    assert [str(e) for e in manifest.errors] == ["row 3 (shot d1), column languages: needs at least one language for its dialogue lines"]

    jobs = expand_shot(manifest.shots[0], MODEL)
    assert [(j.variant, j.language) for j in jobs] == [("16x9-t1", None), ("9x16-t1", None)]
    assert all(j.key_inputs["language"] is None and "<No dialogue>" in j.prompt for j in jobs)
    assert [j.variant for j in expand_shot(manifest.shots[1], MODEL)] == ["1x1-t1"]
    backfill = expand_shot(manifest.shots[0], MODEL, Filters(languages=("ja",)))
    assert [j.render_key for j in backfill] == [j.render_key for j in jobs], "a backfill's languages leave B-roll alone"


def test_contact_sheet_is_a_grid_of_posters():
    poster = io.BytesIO()
    Image.new("RGB", (64, 36), (200, 40, 40)).save(poster, format="JPEG")
    sheet = Image.open(io.BytesIO(contact_sheet([(f"s{i}\nen-16x9-t1", poster.getvalue()) for i in range(8)], columns=6)))
    assert sheet.format == "JPEG" and sheet.width > 6 * 64 and sheet.height > 2 * 96


def test_reference_audio_becomes_planar_float_audio(tmp_path, tmp_store):
    import av
    import numpy as np

    from flows.render_stream import to_render_job

    wav = tmp_path / "refs" / "voice.wav"
    wav.parent.mkdir()
    with av.open(str(wav), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=16000, layout="stereo")
        samples = (np.sin(np.linspace(0, 200, 16000)) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.stack([samples, samples]).T.reshape(1, -1).copy(), format="s16", layout="stereo")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    manifest = read_manifest(str(write_manifest([shot("s1", "A.", reference_audio_uri=str(wav))], tmp_path / "m.parquet")),
                             input_roots=[str(tmp_path / "refs")])
    plan = make_plan(manifest.shots, MODEL, Store(tmp_store))
    request = to_render_job(plan.jobs[0], MODEL.fingerprint).request
    assert request.audio.dtype == np.float32 and request.audio.shape == (2, 16000)
    assert request.audio_sample_rate == 16000 and 0.2 < float(np.abs(request.audio).max()) < 0.3
    assert request.audio is to_render_job(plan.jobs[1], MODEL.fingerprint).request.audio, "decoded once, shared"


def test_render_key_names_the_adapter_and_strength_and_without_one_is_as_before(tmp_path, tmp_store):
    from flows.manifest import validate_rows
    from flows.plan import AdapterChoice

    row = shot("s1", "A scene.", languages=["en"], aspect_ratios=["16:9"])
    [plain], _ = validate_rows([row])
    # main's key before brand adapters existed: a shot without an adapter keeps it (at
    # PIPELINE_CACHE_VERSION 2, the x264 change; at version 1 it was 674bc8b0...f91188)
    assert [j.render_key for j in expand_shot(plain, MODEL)] == [
        "3baa2205ecf104f0e29bfc42984381c6949527727f3855f20e015a280ad79943"]
    keys = {expand_shot(plain, MODEL, adapter=AdapterChoice("acme@1", sha, "file:///a", strength))[0].render_key
            for sha, strength in (("a" * 64, 1.0), ("b" * 64, 1.0), ("a" * 64, 0.5))}
    assert len(keys | {"3baa2205ecf104f0e29bfc42984381c6949527727f3855f20e015a280ad79943"}) == 4

    # the manifest names adapters registered in the store; the one validator refuses others
    store = Store(tmp_store)
    v1 = store.adapters.register("acme", b"v1", {"format": "horse-lora/1"})
    rows = [row, shot("s2", "B.", adapter="acme", adapter_strength=0.8), shot("s3", "C.", adapter="nope"),
            shot("s4", "D.", adapter="acme@7"), shot("s5", "E.", adapter="acme", adapter_strength=float("nan"))]
    manifest = read_manifest(str(write_manifest(rows, tmp_path / "m.parquet")), adapters=store.adapters.names())
    assert [str(e) for e in manifest.errors] == [
        "row 3 (shot s3), column adapter: unknown adapter 'nope' (registered: acme, acme@1; see horse adapter list)",
        "row 4 (shot s4), column adapter: unknown adapter 'acme@7' (registered: acme, acme@1; see horse adapter list)",
        "row 5 (shot s5), column adapter_strength: Input should be a finite number"]
    store.adapters.register("acme", b"v2", {"format": "horse-lora/1"})      # planned: the latest version
    plan = make_plan(manifest.shots, MODEL, store, default_adapter="acme@1", default_adapter_strength=0.3)
    by_shot = {j.shot_id: j.adapter for j in plan.jobs}
    assert by_shot["s2"].name == "acme@2" and by_shot["s2"].strength == 0.8
    assert by_shot["s1"].name == "acme@1" and by_shot["s1"].sha256 == v1["sha256"] and by_shot["s1"].strength == 0.3
    assert make_plan(manifest.shots, MODEL, store, default_adapter="gone").errors[0] == (
        "row 1 (shot s1), render.adapter (configuration): unknown adapter 'gone' (known: acme, acme@1, acme@2)")


def test_the_column_pass_gives_exactly_what_pydantic_gives_row_by_row(tmp_path):
    """parse_manifest vouches for well-formed rows a column at a time; for every row it must give the
    Shot (field for field, fields set included) or the RowErrors validate_rows gives row by row."""
    import pyarrow.parquet as pq

    from flows.manifest import parse_manifest, validate_rows, validation_context
    from flows.manifest_columns import vouched_shots

    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "face.png").write_bytes(b"png")
    line = {"speaker": "woman", "language": "en", "line": "Spring."}
    good = [shot("g1", "  A scene.\n", languages=["EN-us", "en", "de"], aspect_ratios=["9:16", "9:16"], priority=None,
                 preview=None, tags=["hero"], client_ref="PO-1"),
            shot("g2", "B.", dialogue=None, languages=None, destinations=["social", "social"], backend="local",
                 reference_image_uri=str(refs / "face.png"), adapter_strength=-0.5, background_sound="rain"),
            shot("g3", "C.", campaign_id="autumn", dialogue=[line], languages=["en"], must_say=["Spring"])]
    bad = {  # row -> what the column pass must leave to pydantic
        "b1": dict(campaign_id=None), "b2": dict(shot_id="../etc"), "b3": dict(scene=" \u3000 "), "b4": dict(scene="x" * 4001),
        "b5": dict(dialogue=[{**line, "speaker": None}]), "b6": dict(dialogue=[{**line, "line": ""}]),
        "b7": dict(dialogue=[{**line, "language": "tlh"}]), "b8": dict(dialogue=[line, None]),
        "b9": dict(languages=["tlh"]), "b10": dict(aspect_ratios=[]), "b11": dict(aspect_ratios=["3:2"]),
        "b12": dict(aspect_ratios=["16:9", None]), "b13": dict(resolution="720p"), "b14": dict(duration_s=float("nan")),
        "b15": dict(duration_s=10.5), "b16": dict(takes=0), "b17": dict(seed=2**31), "b18": dict(background_sound="x" * 1001),
        "b19": dict(reference_image_uri=str(tmp_path / "elsewhere.png")), "b20": dict(tags=[None]),
        "b21": dict(destinations=["tv"]), "b22": dict(must_say=["Autumn"]), "b23": dict(backend="nope"),
        "b24": dict(adapter="acme"), "b25": dict(adapter_strength=float("inf")), "b26": dict(languages=["en", "fr"]),
        "b27": dict(takes=None)}
    rows = [*good, *({**shot(shot_id, "S."), **change} for shot_id, change in bad.items()), shot("g1", "Again."),
            shot("b13", "Not a duplicate: the row of b13 was refused.")]
    path = write_manifest(rows, tmp_path / "m.parquet")
    options = dict(input_roots=[str(refs)], destinations=["social"], backends=["local"], adapters=())
    table = pq.read_table(path)

    vouched = vouched_shots(table, validation_context(**options))
    assert [s is not None for s in vouched] == [True] * len(good) + [False] * len(bad) + [True, True]
    manifest = parse_manifest(path.read_bytes(), str(path), **options)
    shots, errors = validate_rows(table.to_pylist(), **options)
    assert manifest.errors == errors and [e.row for e in errors] == [*range(len(good) + 1, len(good) + len(bad) + 1), len(rows) - 1]
    assert (errors[-1].row, errors[-1].column, errors[-1].reason) == (len(rows) - 1, "shot_id", "duplicate of row 1 (spring-launch/g1)")
    assert manifest.shots == shots and [s.shot_id for s in shots] == ["g1", "g2", "g3", "b13"]
    for fast, slow in zip(manifest.shots, shots):
        assert list(fast.__dict__.items()) == list(slow.__dict__.items())
        assert fast.model_fields_set == slow.model_fields_set and fast.__pydantic_extra__ == slow.__pydantic_extra__
        assert [line.model_fields_set for line in fast.dialogue] == [line.model_fields_set for line in slow.dialogue]
    assert shots[0].scene == "A scene." and shots[0].languages == ("en", "de") and shots[0].extra == {"client_ref": "PO-1"}
    takes = table.column_names.index("takes")  # a column of another type: the whole manifest goes row by row
    assert vouched_shots(table.set_column(takes, "takes", table.column("takes").cast("int32")), validation_context(**options)) is None


class _Node:
    pass


def test_gc_paused_hands_what_it_built_to_the_oldest_generation():
    """After a bulk build the collector starts again without walking what was built (it is in the
    oldest generation), still collects the cycles made meanwhile, and never unfreezes objects that
    something else froze."""
    with gc_paused():
        assert not gc.isenabled()
        built = [_Node() for _ in range(1000)]
        cycle = _Node()
        cycle.me = cycle
        cycle_ref = weakref.ref(cycle)
        del cycle
    assert gc.isenabled()
    oldest = {id(o) for o in gc.get_objects(generation=2)}
    assert all(id(node) in oldest for node in built)
    gc.collect()
    assert cycle_ref() is None, "a cycle made during the pause is collected by a full collection"

    frozen_before = [_Node() for _ in range(10)]
    gc.freeze()
    try:
        with gc_paused():
            _Node()
        # still frozen: the collector does not see them (the freeze count is no measure: frozen
        # objects still die by reference counting, on any thread)
        collected = {id(o) for o in gc.get_objects()}
        assert not any(id(node) in collected for node in frozen_before)
    finally:
        gc.unfreeze()
