"""Prompt composition in the model's trained format (spec §5) and language codes.

Format (three paragraphs, English except the dialogue lines):
    <scene description>

    Dialogue:
    <speaker, Language>: "line"

    Background Sound:
    <description>
CJK lines (Mandarin, Cantonese, Japanese, Korean) are written with a space between every character.
"""
from __future__ import annotations

import unicodedata

LANGUAGES: tuple[str, ...] = ("en", "zh", "yue", "ja", "ko", "de", "fr")
LANGUAGE_LABELS: dict[str, str] = {"en": "English", "zh": "Mandarin", "yue": "Cantonese", "ja": "Japanese",
                                   "ko": "Korean", "de": "German", "fr": "French"}
CJK_LANGUAGES = frozenset({"zh", "yue", "ja", "ko"})

_ALIASES = {
    "english": "en", "eng": "en",
    "mandarin": "zh", "chinese": "zh", "cmn": "zh", "zho": "zh", "chi": "zh", "zh-cn": "zh", "zh-hans": "zh",
    "zh-tw": "zh", "zh-hant": "zh", "zh-sg": "zh",
    "cantonese": "yue", "zh-hk": "yue", "zh-yue": "yue", "zh-mo": "yue",
    "japanese": "ja", "jpn": "ja", "jp": "ja",
    "korean": "ko", "kor": "ko", "kr": "ko",
    "german": "de", "deu": "de", "ger": "de",
    "french": "fr", "fra": "fr", "fre": "fr",
}

_CODES = frozenset(LANGUAGES)
_LINE_FIELDS = frozenset({"speaker", "language", "line"})

NO_DIALOGUE = "<No dialogue>"
NO_BACKGROUND_SOUND = "<No prominent background sound>"


def normalize_language(code: str) -> str:
    """Map a language code or name ("en", "EN-us", "zh_CN", "Cantonese", "zh-HK") to one of
    LANGUAGES. Raises ValueError naming the code when it is not supported."""
    if type(code) is str and code in _CODES:  # already one (validated manifests): what the rules below return
        return code
    if not isinstance(code, str) or not code.strip():
        raise ValueError(f"unsupported language code {code!r}: expected one of {', '.join(LANGUAGES)}")
    key = code.strip().lower().replace("_", "-")
    if key in LANGUAGES:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    primary = key.split("-")[0]
    if primary in ("en", "ja", "ko", "de", "fr", "yue"):
        return primary
    if primary in _ALIASES and primary not in ("zh",):
        return _ALIASES[primary]
    if primary in ("zh", "cmn"):
        return "zh"
    raise ValueError(f"unsupported language code {code!r}: expected one of {', '.join(LANGUAGES)}")


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return (0x2E80 <= o <= 0x9FFF or 0xA960 <= o <= 0xA97F or 0xAC00 <= o <= 0xD7FF or 0xF900 <= o <= 0xFAFF
            or 0xFF00 <= o <= 0xFFEF or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F or 0x20000 <= o <= 0x3FFFF)


def space_cjk(text: str) -> str:
    """Put one space between every CJK character (punctuation included); runs of other
    characters (Latin words, digits) stay together. "你好，world" -> "你 好 ， world"."""
    parts: list[str] = []
    word = ""
    for ch in text:
        if ch.isspace():
            if word:
                parts.append(word)
                word = ""
        elif _is_cjk(ch):
            if word:
                parts.append(word)
                word = ""
            parts.append(ch)
        else:
            word += ch
    if word:
        parts.append(word)
    return " ".join(parts)


def _nfc(text: str) -> str:
    """`text` NFC-normalised (ASCII text already is: a planner composes hundreds of thousands)."""
    return text if type(text) is str and text.isascii() else unicodedata.normalize("NFC", text)


def _one_line(text: str) -> str:
    """Runs of whitespace as one space, none at the ends (str.split's whitespace is the regex's `\\s`)."""
    return " ".join(_nfc(text).split())


def compose_prompt(scene: str, dialogue: list[dict] | None = None, background_sound: str | None = None) -> str:
    """Build the model prompt from structured fields. `dialogue` items are dicts with keys
    speaker, language (any code accepted by normalize_language) and line."""
    scene = _nfc(scene or "").strip()
    if not scene:
        raise ValueError("scene must be a non-empty description")
    lines = []
    for i, item in enumerate(dialogue or []):
        if not item.keys() >= _LINE_FIELDS:
            raise ValueError(f"dialogue[{i}] is missing {sorted(_LINE_FIELDS - set(item))}")
        speaker = _one_line(str(item["speaker"])).replace("<", "").replace(">", "")
        line = _one_line(str(item["line"]))
        if not speaker or not line:
            raise ValueError(f"dialogue[{i}] needs a non-empty speaker and line")
        lang = normalize_language(item["language"])
        if lang in CJK_LANGUAGES:
            line = space_cjk(line)
        lines.append(f'<{speaker}, {LANGUAGE_LABELS[lang]}>: "{line}"')
    sound = _one_line(background_sound or "").strip("<>").strip()
    return "\n\n".join([scene,
                        "Dialogue:\n" + ("\n".join(lines) if lines else NO_DIALOGUE),
                        "Background Sound:\n" + (f"<{sound}>" if sound else NO_BACKGROUND_SOUND)])


# Negative prompt: data constant, verbatim from upstream daVinci-MagiHuman `video_generate.py`.
# Copyright (c) SandAI. Licensed under the Apache License, Version 2.0.
# Three comma-joined blocks (video, audio quality, speech delivery); all three are required.
NEGATIVE_PROMPT_ATTRIBUTION = "daVinci-MagiHuman video_generate.py, Copyright (c) SandAI, Apache-2.0"
_NEG_VIDEO = ("Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
              "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, "
              "poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still "
              "picture, messy background, three legs, many people in the background, walking backwards")
_NEG_AUDIO = (", low quality, worst quality, poor quality, noise, background noise, hiss, hum, buzz, crackle, static, "
              "compression artifacts, MP3 artifacts, digital clipping, distortion, muffled, muddy, unclear, echo, "
              "reverb, room echo, over-reverberated, hollow sound, distant, washed out, harsh, shrill, piercing, "
              "grating, tinny, thin sound, boomy, bass-heavy, flat EQ, over-compressed, abrupt cut, jarring "
              "transition, sudden silence, looping artifact, music, instrumental, sirens, alarms, crowd noise, "
              "unrelated sound effects, chaotic, disorganized, messy, cheap sound")
_NEG_SPEECH = (", emotionless, flat delivery, deadpan, lifeless, apathetic, robotic, mechanical, monotone, flat "
               "intonation, undynamic, boring, reading from a script, AI voice, synthetic, text-to-speech, TTS, "
               "insincere, fake emotion, exaggerated, overly dramatic, melodramatic, cheesy, cringey, hesitant, "
               "unconfident, tired, weak voice, stuttering, stammering, mumbling, slurred speech, mispronounced, bad "
               "articulation, lisp, vocal fry, creaky voice, mouth clicks, lip smacks, wet mouth sounds, heavy "
               "breathing, audible inhales, plosives, p-pops, coughing, clearing throat, sneezing, speaking too fast, "
               "rushed, speaking too slow, dragged out, unnatural pauses, awkward silence, choppy, disjointed, "
               "multiple speakers, two voices, background talking, out of tune, off-key, autotune artifacts")
NEGATIVE_PROMPT = _NEG_VIDEO + _NEG_AUDIO + _NEG_SPEECH
