"""Speech recognition for the dialogue gate, on real recognisers.

Whisper: a random-weight tiny checkpoint the test saves in the released folder layout, loaded and
decoded by the real code path (features, language identification, forced-language decode); its
text is garbage. pocketsphinx: the real US-English model in its wheel, on speech synthesised by
Debian's flite (the `speak` fixture of tests/conftest.py), judged end to end by the gate with the
configured thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.signal import resample_poly

from flows.settings import load_settings
from media.dialogue import check_dialogue
from model.errors import CheckpointError
from model.speech import check_whisper_folder, load_recognizer

CLIP_RATE = 44100  # what the render hands over: float32 (channels, samples) at the model's audio rate
LINE = "Happy Horse makes every morning brighter."
OTHER_LINE = "The weather in the mountains is cold today."


def clip_audio(mono_16k: np.ndarray, seconds: float = 4.0) -> np.ndarray:
    """A clip's stereo 44.1 kHz soundtrack of `seconds` holding the speech after half a second."""
    speech = resample_poly(mono_16k, 441, 160).astype(np.float32)
    track = np.zeros(round(seconds * CLIP_RATE), np.float32)
    track[CLIP_RATE // 2: CLIP_RATE // 2 + speech.size] = speech[: track.size - CLIP_RATE // 2]
    return np.stack([track, track])


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    from model.whisper import save_tiny_random_whisper
    return save_tiny_random_whisper(tmp_path_factory.mktemp("whisper") / "whisper-tiny-random")


@pytest.fixture(scope="module")
def whisper(whisper_dir):
    return load_recognizer("whisper", whisper_dir, device="cpu", cpu_threads=1)


@pytest.fixture(scope="module")
def sphinx():
    return load_recognizer("pocketsphinx")


def noise(seconds: float, seed: int) -> np.ndarray:
    sound = 0.1 * np.random.default_rng(seed).standard_normal(round(seconds * CLIP_RATE)).astype(np.float32)
    return np.stack([sound, sound])


@pytest.mark.slow
def test_whisper_loads_a_saved_folder_and_decodes_forced_to_the_declared_language(whisper, whisper_dir):
    assert whisper.languages == {"en", "zh", "yue", "ja", "ko", "de", "fr"}
    audio = noise(2.0, seed=1)
    german, japanese = whisper.transcribe(audio, CLIP_RATE, "de"), whisper.transcribe(audio, CLIP_RATE, "ja")
    assert german.text and japanese.text, "the decode produced text (garbage: random weights)"
    assert german.text != japanese.text, "the declared language token steers the decode"
    assert (german.language, japanese.language) == ("de", "ja")
    assert german.language_detected == japanese.language_detected, "identification hears the audio, not the brief"
    staged = json.loads((whisper_dir / "generation_config.json").read_text())["lang_to_id"]
    assert f"<|{german.language_detected}|>" in staged, "a language of the staged checkpoint"
    assert 0 < german.language_probability <= 1 and 0 <= german.no_speech_probability <= 1
    other = whisper.transcribe(noise(2.0, seed=2), CLIP_RATE, "de")
    assert other.language_probability != german.language_probability, "identification reads the audio"
    assert german.to_dict()["backend"] == "whisper"
    with pytest.raises(ValueError, match="cannot transcribe language 'es'"):
        whisper.transcribe(audio, CLIP_RATE, "es")


def test_whisper_folder_must_be_staged_complete(tmp_path):
    with pytest.raises(CheckpointError, match="dialogue.whisper_dir is not set"):
        check_whisper_folder(None)
    with pytest.raises(CheckpointError, match=r"nowhere \(no such folder\)"):
        load_recognizer("whisper", tmp_path / "nowhere")
    partial = tmp_path / "partial"  # the released layout without its tokenizer, and weights only as a pickle
    partial.mkdir()
    for name in ("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer_config.json",
                 "pytorch_model.bin"):
        (partial / name).write_text("{}")
    with pytest.raises(CheckpointError) as info:
        load_recognizer("whisper", partial)
    message = str(info.value)
    assert str(partial) in message and "model.safetensors" in message and "tokenizer.json" in message
    assert "config.json" not in message.split("missing", 1)[1], "only what is missing is named"


def test_pocketsphinx_is_english_only(sphinx):
    with pytest.raises(ValueError, match="English only"):
        sphinx.transcribe(noise(1.0, seed=0), CLIP_RATE, "de")


def judge(sphinx, audio):
    transcript = sphinx.transcribe(audio, CLIP_RATE, "en")
    thresholds = load_settings().dialogue.thresholds("en")
    return transcript, check_dialogue(transcript, [LINE], "en", must_say=["Happy Horse"], thresholds=thresholds)


@pytest.mark.slow
def test_speech_of_the_brief_line_passes_the_gate(sphinx, speak):
    transcript, result = judge(sphinx, clip_audio(speak(LINE)))
    assert result.passed, (transcript.text, result.reason)
    assert transcript.language_detected is None, "pocketsphinx identifies no language"


@pytest.mark.slow
def test_speech_of_another_line_fails_the_gate(sphinx, speak):
    transcript, result = judge(sphinx, clip_audio(speak(OTHER_LINE)))
    assert not result.passed
    assert any(r.startswith("WER") for r in result.reasons), result.reasons
    assert result.missing_terms == ("Happy Horse",)


def test_silence_fails_the_gate_as_no_speech(sphinx):
    transcript, result = judge(sphinx, np.zeros((2, 2 * CLIP_RATE), np.float32))
    assert transcript.text == ""
    assert not result.passed and result.reason == "no speech: the brief has a line"
