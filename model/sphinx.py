"""pocketsphinx: a small recogniser with its US-English model in the wheel, nothing to stage.

English only and far less accurate than Whisper (an HMM with an n-gram language model from 2015),
with no language identification: useful where no Whisper weights can be staged (tests, CI, a
laptop) to check English lines, not for judging delivered clips in other languages.
"""
from __future__ import annotations

import time

import numpy as np

from .speech import SAMPLE_RATE, Transcript, mono_16k


class SphinxRecognizer:
    backend = "pocketsphinx"
    languages = frozenset({"en"})

    def __init__(self):
        from pocketsphinx import Decoder  # the bundled en-us acoustic model, language model and dictionary

        self._decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")

    def transcribe(self, audio: np.ndarray, rate: int, language: str) -> Transcript:
        if language not in self.languages:
            raise ValueError(f"pocketsphinx recognises English only, not {language!r}: stage Whisper weights")
        started = time.perf_counter()
        samples = np.round(np.clip(mono_16k(audio, rate), -1, 1) * 32767)
        # One step of fixed-seed noise: on exact digital silence pocketsphinx's features degenerate and
        # it "hears" a word ("in", "dog"); with the dither it hears nothing, and speech is unchanged.
        samples += np.random.default_rng(0).integers(-1, 2, samples.shape)
        self._decoder.start_utt()
        self._decoder.process_raw(np.clip(samples, -32768, 32767).astype(np.int16).tobytes(), full_utt=True)
        self._decoder.end_utt()
        hypothesis = self._decoder.hyp()
        return Transcript(text=hypothesis.hypstr if hypothesis else "", language=language, language_detected=None,
                          language_probability=None, no_speech_probability=None, backend=self.backend,
                          seconds=time.perf_counter() - started)
