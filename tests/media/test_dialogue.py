"""The dialogue gate's text side: normalisation, WER/CER per language, must-say terms, the decision."""

from __future__ import annotations

import pytest

from media.dialogue import METRICS, Thresholds, check_dialogue, error_rate, missing_terms, normalize
from model.prompt import LANGUAGES
from model.speech import Transcript

LIMITS = Thresholds(max_error_rate=0.2, language_confidence=0.8, no_speech_probability=0.6)


def heard(text, detected=None, probability=None, no_speech=None):
    return Transcript(text=text, language="en", language_detected=detected, language_probability=probability,
                      no_speech_probability=no_speech, backend="whisper", seconds=0.1)


def test_every_model_language_has_a_metric():
    assert set(METRICS) == set(LANGUAGES)
    with pytest.raises(ValueError, match="unsupported language code 'es'"):
        normalize("hola", "es")


@pytest.mark.parametrize("language, text, expected", [
    ("en", "Don't buy 1,000 HappyHorse™ toys — only $9.99!",
     "dont buy one thousand happyhorse toys only nine ninety nine"),
    ("de", "Ich kaufe 1.000 Äpfel für 3,5 € — Straße!", "ich kaufe eintausend äpfel für drei fünf strasse"),
    ("fr", "L’homme a 1 000 chevaux, n'est-ce pas ?", "lhomme a mille chevaux nest ce pas"),
    ("zh", "２０２４年，ＨａｐｐｙＨｏｒｓｅ！你好。", "二千零二十四 年 happyhorse 你好"),
    ("zh", "10万人、100010000", "十 万人 一亿零一万"),
    ("ja", "ハッピーホースは１００円です。", "ハッピーホースは 百 円です"),
    ("ko", "해피 호스는 2024년에 나왔어요!", "해피 호스는 이천이십사 년에 나왔어요"),
    ("en", "Call 0800 123", "call zero eight zero zero one hundred and twenty three"),
])
def test_normalisation(language, text, expected):
    assert normalize(text, language) == expected


@pytest.mark.parametrize("language, expected, hypothesis, rate", [
    ("en", "Happy Horse makes every morning brighter.", "happy yours makes every morning brighter", 1 / 6),
    ("en", "I have 5 horses!", "I have five horses", 0.0),                 # digits and words agree
    ("de", "Guten Morgen, liebe Straße!", "guten morgen liebe strasse", 0.0),
    ("fr", "C'est l'été.", "C’est l’été", 0.0),
    ("fr", "Bonjour tout le monde", "bonjour le monde", 0.25),           # one deleted word of four
    ("zh", "今天天气很好。", "今天 天气 很 好", 0.0),                         # spacing and punctuation ignored
    ("zh", "今天天气很好", "今天天汽很好", 1 / 6),                               # one character of six
    ("ja", "ハッピーホース、１００円！", "ハッピーホース百円", 0.0),
    ("ko", "해피 호스는 좋아요", "해피호스는 좋아요", 0.0),                     # Korean spacing does not count
    ("ko", "해피 호스는 좋아요", "해피 호스는 싫어요", 2 / 8),
])
def test_error_rate_fits_the_language(language, expected, hypothesis, rate):
    assert error_rate(normalize(expected, language), normalize(hypothesis, language), language) == pytest.approx(rate)


def test_must_say_terms_match_whole_words_whatever_their_spacing():
    words = normalize("Happy horse makes seahorses smile, try HappyHorse Pro", "en")
    assert missing_terms(words, ["HappyHorse", "Happy Horse", "happy-horse pro"], "en") == ()
    assert missing_terms(words, ["horse pro", "Sea", "Horses"], "en") == ("horse pro", "Sea", "Horses")
    assert missing_terms(normalize("我 爱 快乐 马。", "zh"), ["快乐马", "快 乐"], "zh") == ()
    assert missing_terms(normalize("我爱快乐马", "zh"), ["快乐牛"], "zh") == ("快乐牛",)
    with pytest.raises(ValueError, match="must-say term '™' has no letters"):
        missing_terms(words, ["™"], "en")


def test_the_line_heard_in_the_language_passes():
    result = check_dialogue(heard("Happy horse makes every morning brighter", "en", 0.99, 0.01),
                            ["Happy Horse makes every morning brighter."], "en", ["Happy Horse"], thresholds=LIMITS)
    assert result.passed and result.reasons == () and result.reason == "WER 0.00 within 0.20"
    record = result.to_dict()
    assert record["reason"] == result.reason and record["heard"] == "happy horse makes every morning brighter"


@pytest.mark.parametrize("transcript, reason", [
    (heard("Happy horse makes every morning brighter", "de", 0.95), "wrong language: heard de (p=0.95), the line is en"),
    (heard("Happy horse wakes every morning lighter"), "WER 0.33 over 0.20"),
    (heard("Happy morse makes every morning brighter"), "must-say term missing: 'Happy Horse'"),
    (heard(" … "), "no speech: the brief has a line"),
    (heard("Thank you.", "en", 0.5, 0.9), "no speech: the recogniser is 0.90 sure the clip has none"),
])
def test_each_failure_is_named(transcript, reason):
    result = check_dialogue(transcript, ["Happy Horse makes every morning brighter."], "en", ["Happy Horse"],
                            thresholds=LIMITS)
    assert not result.passed and result.reason == reason


def test_uncertain_identification_and_a_high_no_speech_estimate_do_not_fail_the_right_words():
    right = "Happy horse makes every morning brighter"
    for transcript in (heard(right, "de", 0.6), heard(right, "en", 0.9, no_speech=0.95)):
        assert check_dialogue(transcript, [right], "en", thresholds=LIMITS).passed


def test_several_lines_are_one_reference_and_no_line_is_nothing_to_check():
    lines = ["Bonjour !", "Ça va ?"]
    assert check_dialogue(heard("bonjour ça va"), lines, "fr", thresholds=LIMITS).error_rate == 0.0
    result = check_dialogue(heard("whatever was said"), [], "en", thresholds=LIMITS)
    assert result.passed and result.reason == "no dialogue to check"
