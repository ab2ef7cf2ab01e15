"""Speech recognition for the dialogue gate: what a recogniser hears in a clip, and which one to load.

    recognizer = load_recognizer("whisper", whisper_dir="/models/whisper-large-v3", device="cuda")
    transcript = recognizer.transcribe(clip.audio, clip.sample_rate, language="de")
    transcript.text, transcript.language_detected, transcript.language_probability

Two backends, loaded once and kept (on the render actor, beside the model):
- "whisper" (`model.whisper`): a Whisper checkpoint in Hugging Face layout from a local folder,
  never downloaded. It identifies the language the clip speaks, then transcribes forced to the
  declared language. All seven languages.
- "pocketsphinx" (`model.sphinx`): the US-English model bundled in the pocketsphinx wheel. English
  only, less accurate, no language identification; needs no weights staged.

This module needs no torch: settings validation checks a Whisper folder with it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from math import gcd
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import CheckpointError

SAMPLE_RATE = 16000  # both recognisers hear 16 kHz mono
BACKENDS = ("whisper", "pocketsphinx")

# A Whisper folder as `hf download openai/whisper-large-v3` leaves it (README "Dialogue gate").
# Tokenizer: tokenizer.json, or the older vocab.json + merges.txt pair.
WHISPER_FILES = {
    "config.json": "the architecture",
    "generation_config.json": "language and task token ids (lang_to_id, task_to_id)",
    "preprocessor_config.json": "the log-mel feature extractor",
    "tokenizer_config.json": "the tokenizer's settings",
}
WHISPER_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))


@dataclass(frozen=True)
class Transcript:
    """What a recogniser heard in one clip. Plain data (`to_dict()` is JSON-ready).

    `language` is the declared language the text was forced to; `language_detected` and its
    probability are the recogniser's own identification (None when it cannot identify languages);
    `no_speech_probability` is Whisper's estimate that the clip holds no speech (None for pocketsphinx,
    whose text is simply empty then)."""

    text: str
    language: str
    language_detected: str | None
    language_probability: float | None
    no_speech_probability: float | None
    backend: str
    seconds: float  # recognition time

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Recognizer(Protocol):
    backend: str
    languages: frozenset[str]  # declared languages it can transcribe

    def transcribe(self, audio: np.ndarray, rate: int, language: str) -> Transcript: ...


def missing_whisper_files(folder: str | Path) -> list[str]:
    """What a Whisper folder lacks, each with why it is needed; [] when complete."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        return [f"{folder} (no such folder)"]
    missing = [f"{name} ({why})" for name, why in WHISPER_FILES.items() if not (folder / name).is_file()]
    if not any(all((folder / name).is_file() for name in names) for names in WHISPER_TOKENIZER_FILES):
        missing.append("tokenizer.json (or vocab.json + merges.txt: the vocabulary)")
    if not ((folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()):
        missing.append("model.safetensors (or model.safetensors.index.json + shards: the weights; "
                       "safetensors only, pickle files are never loaded)")
    return missing


def check_whisper_folder(folder: str | Path | None) -> Path:
    """The folder, or CheckpointError naming it and every file it lacks."""
    if folder is None or not str(folder).strip():
        raise CheckpointError("dialogue.whisper_dir is not set: stage a Whisper checkpoint (README "
                              "\"Dialogue gate\") or use the pocketsphinx backend for English")
    missing = missing_whisper_files(folder)
    if missing:
        raise CheckpointError(f"Whisper folder {Path(folder).expanduser()} is incomplete: missing "
                              + "; ".join(missing) + " (README \"Dialogue gate\" shows how to stage one)")
    return Path(folder).expanduser()


def mono_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    """float32 mono at 16 kHz from (samples,) or (channels, samples) float audio at `rate`."""
    from scipy.signal import resample_poly  # scipy is heavy to import; only recognisers need it

    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=0)
    if audio.ndim != 1:
        raise ValueError(f"audio must be (samples,) or (channels, samples), got shape {audio.shape}")
    if rate <= 0:
        raise ValueError(f"sample rate must be > 0, got {rate}")
    if rate != SAMPLE_RATE:
        g = gcd(int(rate), SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, int(rate) // g).astype(np.float32)
    return audio


def load_recognizer(backend: str, whisper_dir: str | Path | None = None, device: str | None = None,
                    cpu_threads: int | None = None) -> Recognizer:
    """The configured recogniser, loaded (seconds to minutes: keep it resident). device: None picks
    CUDA when there is one; cpu_threads: see WhisperRecognizer."""
    if backend == "whisper":
        from .whisper import WhisperRecognizer
        return WhisperRecognizer(whisper_dir, device=device, cpu_threads=cpu_threads)
    if backend == "pocketsphinx":
        from .sphinx import SphinxRecognizer
        return SphinxRecognizer()
    raise ValueError(f"unknown speech recogniser {backend!r}: expected one of {', '.join(BACKENDS)}")
