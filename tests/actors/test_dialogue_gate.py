"""The dialogue gate in the actor's re-roll loop (horse_actors.delivery.render_checked), without Ray:
real mp4 encodes whose soundtrack is flite speech, heard by the real pocketsphinx recogniser."""

from __future__ import annotations

from types import SimpleNamespace

import av
import numpy as np
import pytest
from scipy.signal import resample_poly

from horse_actors import DialogueCheck, RenderJob, SpeechSpec
from horse_actors.delivery import render_checked, reroll_seed
from horse_actors.dialogue_gate import DialogueGate
from media import encode_mp4
from media.dialogue import Thresholds
from model import InvalidRequest, RenderRequest

LINE = "Happy Horse is here."
RATE = 48_000


def job(max_rerolls: int, unchecked: str | None = None) -> RenderJob:
    check = DialogueCheck("en", (LINE,), Thresholds(0.2, 0.8, 0.6), must_say=("Happy Horse",),
                          max_rerolls=max_rerolls, unchecked=unchecked)
    return RenderJob("0" * 64, RenderRequest(prompt="a horse talks", seconds=2.0, seed=5), "c", "s", "en-16x9-t1",
                     dialogue=check)


def renderer(path: str, said: dict[int, np.ndarray | None]):
    """render_encode for render_checked: encodes `said[seed]` (16 kHz speech; None: silence) as the
    soundtrack of a 2.5 s clip tagged with its seed; returns the seed it rendered."""
    def render_encode(request):
        track = np.zeros(int(2.5 * RATE), np.float32)
        if said[request.seed] is not None:
            speech = resample_poly(said[request.seed], 3, 1).astype(np.float32)[: track.size - RATE // 4]
            track[RATE // 4: RATE // 4 + speech.size] = speech
        frames = np.full((63, 64, 64, 3), 90, np.uint8)
        encode_mp4(SimpleNamespace(frames=frames, audio=np.stack([track, track]), fps=25, sample_rate=RATE), path,
                   {"seed": str(request.seed)})
        return request.seed
    return render_encode


@pytest.fixture(scope="module")
def gate():
    return DialogueGate(SpeechSpec("pocketsphinx"), "cpu")


@pytest.mark.slow
def test_when_no_attempt_passes_the_best_is_delivered_marked_dialogue_failed(gate, speak, tmp_path):
    path = str(tmp_path / "clip.mp4")
    seeds = [5, reroll_seed(5, 1), reroll_seed(5, 2)]
    said = {seeds[0]: speak("The weather is cold today."), seeds[1]: speak("Happy Horse is near."), seeds[2]: None}
    timings: dict[str, float] = {}
    delivered, clip_qc, attempts, dialogue = render_checked(job(2), renderer(path, said), path, timings, gate)

    assert [a["seed"] for a in attempts] == seeds, "every failing attempt re-rolls, up to max_rerolls"
    assert [a["dialogue"]["status"] for a in attempts] == ["dialogue_failed"] * 3
    assert all("transcript" in a["dialogue"] and "error_rate" in a["dialogue"] for a in attempts)
    assert attempts[2]["dialogue"]["reason"] == "no speech: the brief has a line"
    # The best attempt (lowest error rate: one word of four wrong) is delivered, not the last.
    assert delivered == seeds[1] and dialogue["seed"] == seeds[1]
    assert (dialogue["status"], dialogue["attempts"]) == ("dialogue_failed", 3)
    assert dialogue["error_rate"] == min(a["dialogue"]["error_rate"] for a in attempts[:2])
    assert "happy horse" in dialogue["transcript"].lower()
    with av.open(path) as clip:
        assert clip.metadata["seed"] == str(seeds[1]), "the file at path is the delivered attempt's"
    assert clip_qc is None and timings["dialogue"] > 0


def test_an_unchecked_line_is_recorded_as_unchecked_and_never_re_rolled(speak, tmp_path):
    path = str(tmp_path / "clip.mp4")
    no_recogniser = DialogueGate(None, "cpu")
    delivered, _, attempts, dialogue = render_checked(job(2, unchecked="dialogue gate off: no whisper_dir"),
                                                      renderer(path, {5: None}), path, {}, no_recogniser)
    assert (delivered, attempts) == (5, []), "rendered once, nothing heard"
    assert dialogue["status"] == "unchecked" and dialogue["reason"] == "dialogue gate off: no whisper_dir"
    with pytest.raises(InvalidRequest, match="no speech recogniser"):
        render_checked(job(2), renderer(path, {5: None}), path, {}, no_recogniser)


@pytest.mark.slow
def test_the_gate_loads_whisper_from_the_configured_folder_and_hears_the_declared_language(tmp_path):
    from model.whisper import save_tiny_random_whisper

    folder = save_tiny_random_whisper(tmp_path / "whisper")
    gate = DialogueGate(SpeechSpec("whisper", str(folder)), "cpu")
    assert gate.stats()["recognizer"] == "whisper" and gate.recognizer.languages >= {"de", "yue"}
    path = str(tmp_path / "clip.mp4")
    renderer(path, {5: None})(RenderRequest(prompt="x", seconds=2.0, seed=5))
    check = DialogueCheck("de", ("Der Frühling ist da.",), Thresholds(0.2, 0.8, 0.6))
    record = gate.hear(path, check)
    assert (record["recognizer"], record["language"], record["status"]) == ("whisper", "de", "dialogue_failed")
    assert record["language_detected"] is not None, "Whisper identifies the language it hears (random weights: any)"
