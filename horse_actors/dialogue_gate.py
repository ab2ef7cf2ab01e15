"""The dialogue gate on the render actor: what the encoded clip says, against the brief's line.

    gate = DialogueGate(model_spec.speech, device)   # once per actor: the recogniser stays resident
    record = gate.hear(path, job.dialogue)           # one attempt: {status, reason, transcript, ...}

The recogniser (model.speech: Whisper from a local folder, or pocketsphinx for English) hears the
soundtrack of the encoded file, i.e. what will be delivered, identifies its language and
transcribes it forced to the brief's language; media.dialogue compares that with the brief's lines
and must-say terms. The re-roll loop around it is the delivery one (horse_actors.delivery).

A job whose DialogueCheck says `unchecked` (no recogniser for its language, or the gate is off in
this run) is recorded as such, never as a pass. A job that asks for a check this actor cannot do
(no recogniser, or not its language) is refused as an invalid request: its render key promises a
checked clip, and the flows that planned it built this actor's recogniser from the same settings.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .config import SpeechSpec
from .jobs import DialogueCheck

log = logging.getLogger(__name__)

PASSED, FAILED, UNCHECKED = "passed", "dialogue_failed", "unchecked"


def unchecked(check: DialogueCheck | None) -> dict[str, Any] | None:
    """The record of a clip whose line no recogniser of this run can hear (None: no line)."""
    if check is None or not check.unchecked:
        return None
    return {"status": UNCHECKED, "reason": check.unchecked, "language": check.language}


class DialogueGate:
    def __init__(self, spec: SpeechSpec | None, device: str):
        self.spec, self.recognizer, self.load_s = spec, None, 0.0
        self._hearing = threading.Lock()    # overlapping render calls (Scheduling.overlap) share the recogniser
        if spec is None:
            return
        from model.speech import load_recognizer

        started = time.perf_counter()
        # One CPU thread on CPU, as the tiny render: a small model must not stall in OpenMP spin-waits.
        self.recognizer = load_recognizer(spec.backend, spec.whisper_dir, device=device,
                                          cpu_threads=1 if device.startswith("cpu") else None)
        self.load_s = time.perf_counter() - started
        log.info("speech recogniser %s loaded in %.2fs", spec.backend, self.load_s)

    def stats(self) -> dict[str, Any]:
        return {"recognizer": self.spec.backend if self.spec else None, "recognizer_load_s": round(self.load_s, 3)}

    def require(self, check: DialogueCheck) -> None:
        """InvalidRequest unless this gate can hear `check`'s language (a checked check)."""
        from model import InvalidRequest

        if self.recognizer is None:
            raise InvalidRequest("the job asks for a dialogue check and this actor has no speech recogniser "
                                 "(ModelSpec.speech is not set)")
        if check.language not in self.recognizer.languages:
            raise InvalidRequest(f"the {self.recognizer.backend} recogniser cannot hear {check.language!r}")

    def hear(self, path: str, check: DialogueCheck) -> dict[str, Any]:
        """The gate's record of the clip at `path`: status (passed, dialogue_failed, unchecked), the
        reason, the transcript and the scores (media.dialogue.DialogueResult)."""
        if check.unchecked:
            return unchecked(check)
        self.require(check)
        from media.dialogue import check_dialogue
        from media.measure import RATE

        sound = _soundtrack(path, RATE)
        with self._hearing:
            transcript = self.recognizer.transcribe(sound, RATE, check.language)
        result = check_dialogue(transcript, check.lines, check.language, check.must_say, thresholds=check.thresholds)
        return {"status": PASSED if result.passed else FAILED, **result.to_dict(), "transcript": transcript.text,
                "no_speech_probability": transcript.no_speech_probability, "recognizer": transcript.backend,
                "recognize_s": round(transcript.seconds, 4)}


def _soundtrack(path: str, rate: int):
    """The clip's sound at `rate`; a file without a sound track (a provider clip delivered without
    audio) is heard as a second of silence, i.e. as no speech, never as an error that hides the clip."""
    import av
    import numpy as np

    from media.measure import decode_audio

    with av.open(path) as box:
        if not box.streams.audio:
            return np.zeros((1, rate), np.float32)
        return decode_audio(box)
