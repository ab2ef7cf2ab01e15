"""The dialogue gate's configuration: thresholds per language and destination, refused when wrong."""

from __future__ import annotations

import pytest

from flows.settings import ConfigError, load_settings


def test_thresholds_per_language_and_the_strictest_destination(tmp_path):
    config = tmp_path / "studio.yaml"
    config.write_text("dialogue: {max_error_rate: {de: 0.3},"
                      " destination_max_error_rate: {broadcast-eu: {de: 0.1}, social: {de: 0.4, en: 0.35}}}\n")
    dialogue = load_settings(config).dialogue
    assert dialogue.max_error_rate["ja"] == 0.2, "languages the file leaves out keep their defaults"
    assert dialogue.thresholds("de").max_error_rate == 0.3
    assert dialogue.thresholds("de", ["social"]).max_error_rate == 0.4
    assert dialogue.thresholds("de", ["social", "broadcast-eu"]).max_error_rate == 0.1
    assert dialogue.thresholds("fr", ["broadcast-eu"]).max_error_rate == 0.25, "a destination without fr keeps fr's"
    assert dialogue.thresholds("en", ["broadcast-us"]).language_confidence == 0.8


@pytest.mark.parametrize("yaml_text, expected", [
    ("dialogue: {max_error_rate: {sp: 0.2}}", "dialogue.max_error_rate: Value error, unknown language 'sp'"),
    ("dialogue: {max_error_rate: {en: 1.5}}", "dialogue.max_error_rate.en: Input should be less than or equal to 1"),
    ("dialogue: {max_error_rate: null}", "dialogue.max_error_rate: Input should be a valid dictionary"),
    ("dialogue: {destination_max_error_rate: {social: {english: 0.2}}}",
     "dialogue.destination_max_error_rate: Value error, social: unknown language 'english'"),
    ("dialogue: {destination_max_error_rate: {Broadcast EU: {en: 0.1}}}", "'Broadcast EU' is not a destination name"),
    ("dialogue: {recognizer: vosk}", "dialogue.recognizer: Input should be 'whisper' or 'pocketsphinx'"),
    ("dialogue: {whisper_dir: /no/such/whisper}", "dialogue.whisper_dir: Value error, Whisper folder /no/such/whisper "
                                                  "is incomplete: missing /no/such/whisper (no such folder)"),
    ("dialogue: {language_confidence: 0}", "dialogue.language_confidence"),
    ("dialogue: {whisper_folder: /x}", "dialogue.whisper_folder: unknown key"),
])
def test_bad_dialogue_configuration_names_key_and_reason(tmp_path, yaml_text, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert expected in str(info.value)


def test_a_whisper_folder_without_weights_is_refused_with_what_it_lacks(tmp_path):
    folder = tmp_path / "whisper"
    folder.mkdir()
    for name in ("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer_config.json",
                 "tokenizer.json"):
        (folder / name).write_text("{}")
    with pytest.raises(ConfigError, match=r"dialogue.whisper_dir: .*missing model.safetensors") as info:
        load_settings(dialogue={"whisper_dir": str(folder)})
    assert "config.json" not in str(info.value).split("missing", 1)[1]
    (folder / "model.safetensors").write_bytes(b"")
    assert load_settings(dialogue={"whisper_dir": str(folder)}).dialogue.whisper_dir == str(folder)
