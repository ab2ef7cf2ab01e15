"""The dialogue gate for a run: which recogniser the actors load, and what each clip is checked for.

    policy = dialogue_policy(settings)                 # once per run, like its destinations
    key_inputs, check = policy.for_variant("en", ["Spring is here."], ["Happy Horse"], ["broadcast-eu"])

When the gate is on, a variant with dialogue lines gets a `DialogueCheck` (its lines, must-say
terms, the strictest thresholds of its destinations, `render.max_rerolls`) and its render key
covers that policy and the recogniser's identity: they decide which seed is delivered.

When is it off? `dialogue.recognizer: whisper` with no `dialogue.whisper_dir` (the default: no
weights can be assumed), or a language the configured recogniser cannot hear (pocketsphinx hears
English only; a Whisper before large-v3 has no Cantonese). Those clips are rendered as before (their
keys do not change) and recorded `unchecked` with the reason, never as passed; each run says so
(`off_note`) in its log and summary.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Iterable, Sequence

from flows.settings import DialogueSettings, HorseSettings
from horse_actors import DialogueCheck, SpeechSpec
from model.prompt import LANGUAGES


@dataclass(frozen=True)
class DialoguePolicy:
    settings: DialogueSettings
    max_rerolls: int
    speech: SpeechSpec | None         # what each actor loads; None: the gate is off in this run
    languages: frozenset[str] = frozenset()  # the languages the recogniser hears
    fingerprint: str | None = None    # the recogniser's identity, for render keys
    off_reason: str | None = None
    # (language, destinations) -> Thresholds: the settings' answer, worked out once per run
    _thresholds: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def for_variant(self, language: str | None, lines: Sequence[str], must_say: Sequence[str],
                    destinations: Iterable[str] = ()) -> tuple[dict[str, Any] | None, DialogueCheck | None]:
        """(what the render key adds, the actor's check) of one variant; (None, None) without lines;
        (None, an unchecked check) when the gate cannot hear this language."""
        if not language or not lines:
            return None, None
        destinations = tuple(destinations)
        thresholds = self._thresholds.get((language, destinations))
        if thresholds is None:  # a planner asks for the same few hundred thousand times
            thresholds = self._thresholds[language, destinations] = self.settings.thresholds(language, destinations)
        unchecked = None
        if self.speech is None:
            unchecked = self.off_reason
        elif language not in self.languages:
            unchecked = (f"the {self.speech.backend} recogniser cannot hear {language}"
                         + (" (English only): stage Whisper weights" if self.speech.backend == "pocketsphinx" else ""))
        check = DialogueCheck(language, tuple(lines), thresholds, tuple(must_say), self.max_rerolls, unchecked)
        if unchecked is not None:
            return None, check
        return {"recognizer": self.speech.backend, "recognizer_fingerprint": self.fingerprint,
                "must_say": sorted(must_say), "thresholds": dataclasses.asdict(thresholds),
                "max_rerolls": self.max_rerolls}, check

    @property
    def off_note(self) -> str | None:
        """One line for the run's log and summary when the gate checks nothing or not every language."""
        if self.speech is None:
            return f"dialogue gate off: {self.off_reason}; clips with dialogue are marked unchecked"
        unheard = [code for code in LANGUAGES if code not in self.languages]
        if unheard:
            return (f"dialogue gate: the {self.speech.backend} recogniser cannot hear {', '.join(unheard)}; "
                    "those clips are marked unchecked")
        return None


def speech_spec(settings: HorseSettings) -> SpeechSpec | None:
    """The recogniser the run's actors load (None: the gate is off)."""
    dialogue = settings.dialogue
    if dialogue.recognizer == "pocketsphinx":
        return SpeechSpec("pocketsphinx")
    return SpeechSpec("whisper", dialogue.whisper_dir) if dialogue.whisper_dir else None


def dialogue_policy(settings: HorseSettings) -> DialoguePolicy:
    """The run's gate: the recogniser, the languages it hears and its fingerprint (a Whisper folder
    is hashed once per machine: model.checkpoint caches the digests of large files)."""
    spec = speech_spec(settings)
    common = dict(settings=settings.dialogue, max_rerolls=settings.render.max_rerolls, speech=spec)
    if spec is None:
        return DialoguePolicy(**common, off_reason="dialogue.whisper_dir is not set (stage Whisper weights, "
                                                   "or set dialogue.recognizer: pocketsphinx for English)")
    if spec.backend == "pocketsphinx":
        return DialoguePolicy(**common, languages=frozenset({"en"}),
                              fingerprint=f"pocketsphinx {package_version('pocketsphinx')} en-us")
    from model.checkpoint import fingerprint_files

    folder = Path(spec.whisper_dir).expanduser()
    known = json.loads((folder / "generation_config.json").read_text()).get("lang_to_id") or {}
    languages = frozenset(code for code in LANGUAGES if f"<|{code}|>" in known)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))  # not hf's .cache/
    fingerprint, _ = fingerprint_files(folder, files)
    return DialoguePolicy(**common, languages=languages, fingerprint=fingerprint)
