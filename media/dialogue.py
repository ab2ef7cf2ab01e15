"""The dialogue gate's text side: normalisation, error rates, must-say terms and the pass/fail decision.

    result = check_dialogue(transcript, ["Happy Horse makes mornings brighter."], "en",
                            must_say=["Happy Horse"], thresholds=Thresholds(0.2, 0.8, 0.6))
    result.passed, result.reason, result.to_dict()      # plain data, JSON-ready

`transcript` is anything with the attributes of `model.speech.Transcript` (text, language_detected,
language_probability, no_speech_probability); this module is pure text work and imports no model.

Normalisation, the same for the brief's line and what was heard: symbols dropped (™, €), NFKC
(full-width letters, digits and punctuation become half-width), case folded, apostrophes dropped
("don't" = "dont", "l'homme" = "lhomme"), numbers written as words in the clip's language ("5" =
"five", "2024年" = "二千零二十四年"; grouping marks read per language: "1,000" en, "1.000" de,
"1 000" fr), then every punctuation mark becomes a space. A decimal point is punctuation ("3.5" =
"three five"), so both sides still agree. Runs of more than 12 digits or with a leading zero
(codes, phone numbers) are read digit by digit.

Error rate (jiwer): word error rate for en, de, fr; character error rate for zh, yue and ja, which
write no spaces, and for ko, whose spacing varies between writers and recognisers (particles attach
to words, so one spacing difference would cost whole words); spaces are ignored for all four.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any, Protocol, Sequence

from num2words import num2words

# Which error rate fits each language the model speaks (model.prompt.LANGUAGES; a test keeps them equal).
METRICS = {"en": "wer", "de": "wer", "fr": "wer", "zh": "cer", "yue": "cer", "ja": "cer", "ko": "cer"}

_APOSTROPHES = re.compile(r"['\u2019\u02bc]")
_GROUPING = {"en": ",", "de": ". ", "fr": " .", "zh": ",", "yue": ",", "ja": ",", "ko": ","}
_NUMBER_WORDS_LANG = {"en": "en", "de": "de", "fr": "fr", "ja": "ja", "ko": "ko"}  # zh, yue: _chinese_number
_LONGEST_CARDINAL = 12  # digits


class Heard(Protocol):
    text: str
    language_detected: str | None
    language_probability: float | None
    no_speech_probability: float | None


@dataclass(frozen=True)
class Thresholds:
    """Limits for one clip (configuration: `dialogue` in configs/defaults.yaml, per language and destination)."""

    max_error_rate: float         # WER or CER, whichever fits the language
    language_confidence: float    # "wrong language" only when the recogniser is at least this sure
    no_speech_probability: float  # Whisper's no-speech estimate at or above this, with the words wrong: no speech


@dataclass(frozen=True)
class DialogueResult:
    """The gate's decision on one clip; `reasons` lists every failure (empty when it passed)."""

    passed: bool
    reasons: tuple[str, ...]
    language: str
    metric: str
    error_rate: float | None
    max_error_rate: float
    expected: str                 # normalised brief lines
    heard: str                    # normalised transcript
    missing_terms: tuple[str, ...]
    language_detected: str | None
    language_probability: float | None

    @property
    def reason(self) -> str:
        if self.reasons:
            return "; ".join(self.reasons)
        if not self.expected:
            return "no dialogue to check"
        return f"{self.metric.upper()} {self.error_rate:.2f} within {self.max_error_rate:.2f}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reason": self.reason}


def _metric(language: str) -> str:
    if language not in METRICS:
        raise ValueError(f"unsupported language code {language!r}: expected one of {', '.join(METRICS)}")
    return METRICS[language]


def _chinese_number(n: int) -> str:
    """Mandarin/Cantonese reading of 0 <= n < 10**12 in characters: 2024 -> 二千零二十四, 100000 -> 十万."""
    digits = "零一二三四五六七八九"
    if n == 0:
        return digits[0]

    def group(g: int) -> str:  # 1..9999
        out, gap = "", False
        for value, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
            d = g // value % 10
            if d:
                out += ("零" if gap and out else "") + digits[d] + unit
                gap = False
            else:
                gap = True
        return out

    parts: list[str] = []
    gap = False
    for value, unit in ((10**8, "亿"), (10**4, "万"), (1, "")):
        g = n // value % 10**4
        if g:
            parts.append(("零" if parts and (gap or g < 1000) else "") + group(g) + unit)
            gap = False
        elif parts:
            gap = True
    text = "".join(parts)
    return text[1:] if text.startswith("一十") else text


def _spell(n: int, language: str) -> str:
    return _chinese_number(n) if language in ("zh", "yue") else num2words(n, lang=_NUMBER_WORDS_LANG[language])


def _number_words(number: str, language: str) -> str:
    digits = re.sub(r"\D", "", number)
    if len(digits) > _LONGEST_CARDINAL or (len(digits) > 1 and digits[0] == "0"):
        return " " + " ".join(_spell(int(d), language) for d in digits) + " "
    return f" {_spell(int(digits), language)} "


def normalize(text: str, language: str) -> str:
    """The text as the gate compares it: words separated by single spaces (module docstring)."""
    _metric(language)
    text = "".join(" " if unicodedata.category(ch)[0] == "S" else ch for ch in text)  # before NFKC makes ™ "TM"
    text = _APOSTROPHES.sub("", unicodedata.normalize("NFKC", text).casefold())
    separators = re.escape(_GROUPING[language])
    number = re.compile(rf"\d{{1,3}}(?:[{separators}]\d{{3}})+(?!\d)|\d+")
    text = number.sub(lambda m: _number_words(m.group(), language), text)
    text = "".join(" " if unicodedata.category(ch)[0] in "PSZC" else ch for ch in text)
    return " ".join(text.split())


def error_rate(expected: str, heard: str, language: str) -> float:
    """WER or CER (by language) of `heard` against `expected`, both already normalised; expected non-empty."""
    import jiwer  # on first use: planning builds Thresholds from this module but hears nothing

    if _metric(language) == "wer":
        return float(jiwer.wer(expected, heard))
    return float(jiwer.cer(expected.replace(" ", ""), heard.replace(" ", "")))


def missing_terms(heard: str, terms: Sequence[str], language: str) -> tuple[str, ...]:
    """The must-say terms not in `heard` (normalised). A term matches as whole words, its own spacing
    aside ("HappyHorse" = "happy horse"); in zh, yue, ja and ko anywhere, spaces ignored."""
    words = heard.split()
    missing = []
    for term in terms:
        wanted = normalize(term, language).replace(" ", "")
        if not wanted:
            raise ValueError(f"must-say term {term!r} has no letters or digits to listen for")
        if _metric(language) == "cer":
            found = wanted in heard.replace(" ", "")
        else:
            found = any(_joins_to(words[i:], wanted) for i in range(len(words)))
        if not found:
            missing.append(term)
    return tuple(missing)


def _joins_to(words: list[str], wanted: str) -> bool:
    joined = ""
    for word in words:
        joined += word
        if len(joined) >= len(wanted):
            return joined == wanted
    return False


def check_dialogue(transcript: Heard, expected_lines: Sequence[str], language: str, must_say: Sequence[str] = (),
                   *, thresholds: Thresholds) -> DialogueResult:
    """Pass or fail one clip's speech against the brief's lines in `language` (one of METRICS).

    Fails on: no speech where the brief has a line; the wrong language (the recogniser names another
    language with at least `language_confidence`); an error rate over `max_error_rate`; a must-say term
    not heard. A clip whose brief has no line in `language` passes unchecked."""
    metric = _metric(language)
    expected = normalize(" ".join(expected_lines), language)
    heard = normalize(transcript.text, language)
    detected, probability = transcript.language_detected, transcript.language_probability
    result = dict(language=language, metric=metric, max_error_rate=thresholds.max_error_rate, expected=expected,
                  heard=heard, language_detected=detected, language_probability=probability)
    if not expected:
        return DialogueResult(True, (), error_rate=None, missing_terms=(), **result)
    if not heard:
        return DialogueResult(False, ("no speech: the brief has a line",), error_rate=None,
                              missing_terms=tuple(must_say), **result)
    rate = error_rate(expected, heard, language)
    missing = missing_terms(heard, must_say, language)
    reasons = []
    no_speech = transcript.no_speech_probability
    if rate > thresholds.max_error_rate and no_speech is not None and no_speech >= thresholds.no_speech_probability:
        reasons.append(f"no speech: the recogniser is {no_speech:.2f} sure the clip has none")
    else:
        if detected is not None and detected != language and probability is not None \
                and probability >= thresholds.language_confidence:
            reasons.append(f"wrong language: heard {detected} (p={probability:.2f}), the line is {language}")
        if rate > thresholds.max_error_rate:
            reasons.append(f"{metric.upper()} {rate:.2f} over {thresholds.max_error_rate:.2f}")
        if missing:
            reasons.append("must-say term missing: " + ", ".join(map(repr, missing)))
    return DialogueResult(not reasons, tuple(reasons), error_rate=rate, missing_terms=missing, **result)
