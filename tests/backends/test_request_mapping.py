"""A brief mapped to a provider's request: nearest supported values, reported; prose prompt;
a render key that covers every request field."""

from __future__ import annotations

from dataclasses import replace

import pytest

from catalog import render_key
from horse_actors.backends import map_brief, plain_prompt, provider_spec
from model.errors import InvalidRequest

SEEDANCE = provider_spec("seedance-2.0")
BRIEF = dict(scene="Two friends at a night market.", aspect_ratio="16:9", resolution="1080p", seconds=5, seed=11)


@pytest.mark.parametrize("asked, sent", [("16:9", "16:9"), ("4:5", "3:4"), ("2:1", "16:9"), ("1.91:1", None),
                                         ("9:19", "9:16"), ("12:5", "21:9"),
                                         ("41:20", "21:9")])  # nearer on a log scale, not on a linear one
def test_the_nearest_supported_ratio_is_sent_and_the_difference_reported(asked, sent):
    if sent is None:
        with pytest.raises(InvalidRequest):
            map_brief(SEEDANCE, **{**BRIEF, "aspect_ratio": asked})
        return
    request = map_brief(SEEDANCE, **{**BRIEF, "aspect_ratio": asked})
    assert request.ratio == sent
    assert request.adjustments.get("aspect_ratio") == (None if asked == sent else {"asked": asked, "sent": sent})


@pytest.mark.parametrize("asked, sent", [(5, 5), (2, 4), (5.4, 5), (30, 15)])
def test_durations_are_clamped_to_what_the_model_renders(asked, sent):
    request = map_brief(SEEDANCE, **{**BRIEF, "seconds": asked})
    assert request.seconds == sent
    assert ("seconds" in request.adjustments) == (asked != sent)


def test_seeds_beyond_the_providers_range_are_folded_into_it_and_reported():
    request = map_brief(SEEDANCE, **{**BRIEF, "seed": 2**40 + 5})
    assert request.seed == 5 and request.adjustments["seed"] == {"asked": 2**40 + 5, "sent": 5}


@pytest.mark.parametrize("asked, on_ark, on_fal", [("256p", "480p", "480p"), ("540p", "720p", "720p"),
                                                   ("1080p", "1080p", "720p")])
def test_resolution_goes_up_to_the_next_tier_or_down_to_the_top_one(asked, on_ark, on_fal):
    assert map_brief(SEEDANCE, **{**BRIEF, "resolution": asked}).resolution == on_ark
    assert map_brief(provider_spec("seedance-2.0-fal"), **{**BRIEF, "resolution": asked}).resolution == on_fal


def test_the_prompt_is_prose_with_every_line_verbatim():
    prompt = plain_prompt("A quiet café.", [{"speaker": "Mei", "language": "zh-HK", "line": "早晨，你好！"},
                                            {"speaker": "Tom", "language": "en", "line": "Morning!"}],
                          "rain on the window")
    assert prompt == ("A quiet café.\n\nSpoken dialogue, lip-synced, in this order:\n"
                      'Mei says in Cantonese: "早晨，你好！"\nTom says in English: "Morning!"\n\n'
                      "Background sound: rain on the window")
    assert plain_prompt("An empty beach.") == "An empty beach.\n\nNobody speaks."
    with pytest.raises(InvalidRequest):
        plain_prompt("A scene.", [{"speaker": "Al", "language": "tlh", "line": "Qapla'"}])


def test_the_render_key_covers_every_request_field_and_only_those():
    base = map_brief(SEEDANCE, **BRIEF)
    key = render_key(base.key_inputs())
    changed = [replace(base, provider="other"), replace(base, model="other-model"), replace(base, prompt="x"),
               replace(base, ratio="1:1"), replace(base, resolution="720p"), replace(base, seconds=6),
               replace(base, seed=12), replace(base, generate_audio=False), replace(base, image_sha256="0" * 64),
               replace(base, extra={"watermark": True})]
    assert len({render_key(r.key_inputs()) for r in changed} | {key}) == len(changed) + 1
    assert render_key(replace(base, adjustments={"note": "reporting only"}).key_inputs()) == key
    assert base.key_inputs()["backend"] == "api"


def test_a_first_frame_travels_as_a_data_url_and_a_bad_file_is_refused():
    request = map_brief(SEEDANCE, **BRIEF, image=b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
    assert request.image_data_url().startswith("data:image/png;base64,iVBORw0KGgo")
    assert map_brief(provider_spec("seedance-2.0-fal"), **BRIEF, image=b"\xff\xd8\xff\xe0").model.endswith(
        "image-to-video")
    with pytest.raises(InvalidRequest):
        map_brief(SEEDANCE, **BRIEF, image=b"GIF89a")


@pytest.mark.parametrize("url", ["https://horse:s3cret-token@hooks.example.com/seedance",
                                 "https://hooks.example.com/seedance?token=s3cret-token",
                                 "https://hooks.example.com/seedance#s3cret-token",
                                 "http://hooks.example.com/seedance"])
def test_a_callback_url_that_could_carry_a_credential_is_refused_without_echoing_it(url):
    with pytest.raises(ValueError) as refused:
        provider_spec("seedance-2.0", callback_url=url)
    assert "callback_url" in str(refused.value) and "s3cret" not in str(refused.value)
    assert provider_spec("seedance-2.0", callback_url="https://hooks.example.com/seedance").callback_url
