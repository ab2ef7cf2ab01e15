"""The dialogue gate in planning: the must_say column, what each variant is checked for, and the
gate's policy in the render key (on), or the clip marked unchecked with its key unchanged (off)."""

from __future__ import annotations

import json

import pytest

from flows.dialogue import dialogue_policy
from flows.destinations import run_destinations
from flows.manifest import validate_rows
from flows.plan import ModelInfo, expand_shot
from flows.render_stream import pool_config, to_render_job
from flows.settings import load_settings

from .conftest import shot

MODEL = ModelInfo("f" * 64, "distill", lambda resolution, aspect: (128, 64))
TERMS = ["Frühling"]  # in the shot fixture's de line only


def one_shot(**overrides):
    [validated], errors = validate_rows([shot("s010", "A woman in the rain.", aspect_ratios=["16:9"], **overrides)])
    assert not errors, errors
    return validated


def keyed(jobs) -> dict[str, str]:
    return {job.language: job.render_key for job in jobs}


def test_must_say_terms_are_validated_against_every_language_line():
    _, errors = validate_rows([shot("s010", "x", must_say=["Frühling"])])
    assert [str(e) for e in errors] == ["row 1 (shot s010), column must_say: 'Frühling' not in the en line"]
    _, errors = validate_rows([shot("s010", "x", dialogue=[], languages=[], must_say=["Horse"])])
    assert errors[0].column == "must_say" and "no dialogue lines" in errors[0].reason
    _, errors = validate_rows([shot("s010", "x", must_say=["  "])])
    assert errors[0].column == "must_say" and "1-200 characters" in errors[0].reason
    assert one_shot(languages=["de"], must_say=[" Frühling ", "Frühling"]).must_say == ("Frühling",)


def test_the_gate_policy_is_in_the_render_key_of_the_languages_it_hears(tmp_store):
    plain = keyed(expand_shot(one_shot(languages=["en", "de"]), MODEL))
    off = dialogue_policy(load_settings(store_url=tmp_store))  # the default: whisper without weights
    assert off.speech is None and "dialogue.whisper_dir is not set" in off.off_note
    jobs = expand_shot(one_shot(languages=["en", "de"]), MODEL, dialogue=off)
    assert keyed(jobs) == plain, "an unchecked clip keeps the key it had without the gate"
    assert {j.language: j.dialogue.unchecked.split(" (")[0] for j in jobs} == {
        "en": "dialogue.whisper_dir is not set", "de": "dialogue.whisper_dir is not set"}

    settings = load_settings(store_url=tmp_store, dialogue={"recognizer": "pocketsphinx"},
                             render={"destinations": ["broadcast-eu"], "max_rerolls": 2})
    sphinx = dialogue_policy(settings)
    jobs = expand_shot(one_shot(languages=["en", "de"]), MODEL, destinations=run_destinations(settings), dialogue=sphinx)
    en, de = sorted(jobs, key=lambda j: j.language != "en")
    assert (en.dialogue.lines, en.dialogue.max_rerolls, en.dialogue.unchecked) == (("Spring is here.",), 2, None)
    assert en.key_inputs["dialogue"]["recognizer"] == "pocketsphinx"
    assert "dialogue" not in de.key_inputs and "cannot hear de" in de.dialogue.unchecked
    sent = to_render_job(en, MODEL.fingerprint)
    assert sent.dialogue == en.dialogue and pool_config(settings).model.speech.backend == "pocketsphinx"

    def en_key(row=None, **changes) -> str:
        policy = dialogue_policy(load_settings(store_url=tmp_store, **{"dialogue": {"recognizer": "pocketsphinx"},
                                                                        **changes}))
        return keyed(expand_shot(one_shot(languages=["en"], **(row or {})), MODEL, dialogue=policy))["en"]

    base = en_key()
    assert base != plain["en"], "a checked clip's key covers the gate"
    assert en_key(render={"max_rerolls": 3}) != base
    assert en_key(dialogue={"recognizer": "pocketsphinx", "max_error_rate": {"en": 0.1}}) != base
    assert en_key(row={"must_say": ["Spring"]}) != base


def test_a_whisper_folder_is_heard_in_its_languages_and_keyed_by_its_files(tmp_path, tmp_store):
    folder = tmp_path / "whisper"
    folder.mkdir()
    for name in ("config.json", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json"):
        (folder / name).write_text("{}")
    (folder / "generation_config.json").write_text(json.dumps({"lang_to_id": {"<|en|>": 1, "<|de|>": 2, "<|es|>": 3}}))
    (folder / "model.safetensors").write_bytes(b"weights one")
    settings = load_settings(store_url=tmp_store, dialogue={"whisper_dir": str(folder)})
    policy = dialogue_policy(settings)
    assert policy.languages == {"en", "de"} and "cannot hear zh, yue, ja, ko, fr" in policy.off_note
    (folder / "model.safetensors").write_bytes(b"weights two")
    assert dialogue_policy(settings).fingerprint != policy.fingerprint, "other weights, other render keys"


@pytest.mark.parametrize("yaml_text, expected", [
    ("dialogue: {recognizer: whisper, whisper_dir: ''}", None),  # empty: the gate is off, not an error
    ("dialogue: {max_error_rate: {en: -0.1}}", "dialogue.max_error_rate.en: Input should be greater than or equal to 0"),
])
def test_dialogue_configuration_edges(tmp_path, tmp_store, yaml_text, expected):
    from flows.settings import ConfigError

    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    if expected is None:
        assert dialogue_policy(load_settings(config, store_url=tmp_store)).speech is None
        return
    with pytest.raises(ConfigError, match=expected):
        load_settings(config, store_url=tmp_store)


def test_fast_variant_keys_hash_the_gate_and_the_adapter_like_key_inputs_say(tmp_store):
    # The planner fills per-variant values into one shared canonical text (catalog.render_key_grid);
    # a job's key_inputs (receipts, lineage, API routing) are rebuilt from its fields: both must agree.
    from catalog import render_key
    from flows.plan import AdapterChoice
    from model.stages import adapter_key_input

    settings = load_settings(store_url=tmp_store, dialogue={"recognizer": "pocketsphinx"},
                             render={"destinations": ["broadcast-eu"], "max_rerolls": 2})
    [validated], _ = validate_rows([shot("s010", "A woman.", aspect_ratios=["16:9", "9:16"], takes=2)])
    adapter = AdapterChoice("acme@1", "a" * 64, "file:///a", 0.7)
    jobs = expand_shot(validated, MODEL, destinations=run_destinations(settings), dialogue=dialogue_policy(settings),
                       adapter=adapter)
    assert len(jobs) == 8 and len({job.render_key for job in jobs}) == 8
    for job in jobs:
        assert job.render_key == render_key(job.key_inputs), job.variant
        assert job.key_inputs["adapter"] == adapter_key_input("a" * 64, 0.7)
        assert ("dialogue" in job.key_inputs) == (job.language == "en"), "pocketsphinx hears en only"


def test_planned_keys_are_the_keys_of_each_jobs_inputs_for_varied_shots(tmp_store):
    # The planner writes a shot's shared key text once for all its languages and keeps it for the
    # next shots with the same values (catalog.render_key_grid): a varied night, planned twice
    # (the second time from kept texts), must key every job as render_key(job.key_inputs) says.
    from catalog import render_key
    from flows.plan import AdapterChoice

    cjk = [{"speaker": "Cafe\u0301 %s", "language": "ja", "line": "春が来た。 100%"},
           {"speaker": "man", "language": "en", "line": " 50% %(x)s  off "}]
    rows = [shot("s1", "A woman.", duration_s=5.0), shot("s2", "A woman.", duration_s=5.5),
            shot("s3", "夜の東京 Cafe\u0301 %s", dialogue=cjk, languages=["ja", "en"], duration_s=5.0),
            shot("s4", "B-roll.", dialogue=[], languages=[], takes=2), shot("s5", "Rain %d.", destinations=["social"])]
    shots, errors = validate_rows(rows)
    assert not errors, errors
    settings = load_settings(store_url=tmp_store, dialogue={"recognizer": "pocketsphinx"},
                             render={"destinations": ["broadcast-eu"], "max_rerolls": 2})
    runs = [{}, {"destinations": run_destinations(settings), "dialogue": dialogue_policy(settings),
                 "adapter": AdapterChoice("acme@1", "a" * 64, "file:///a", 0.5)}]
    planned = [[job for s in shots for job in expand_shot(s, MODEL, **run)] for run in runs for _ in range(2)]
    assert [len(jobs) for jobs in planned] == [20, 20, 20, 20]
    for jobs in planned:
        assert all(job.render_key == render_key(job.key_inputs) for job in jobs)
    assert len({job.render_key for jobs in planned for job in jobs}) == 40, "each option and value keys apart"
