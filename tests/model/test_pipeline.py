"""Tiny-preset renders: every mode on CPU with the spec's shapes; reproducibility; validation."""
import numpy as np
import pytest

from model import (LANGUAGES, Clip, HappyHorsePipeline, InvalidRequest, RenderCancelled, RenderRequest, frame_count,
                   latent_lengths)

TIMING_KEYS = {"text_encode", "denoise", "sr", "decode"}


def req(**kw):
    base = dict(prompt="A horse talks.", seconds=1.0, seed=3)
    base.update(kw)
    return RenderRequest(**base)


def check_clip(clip, pipe, seconds, resolution="256p", aspect="16:9"):
    w, h = pipe.size_for(resolution, aspect)
    assert isinstance(clip, Clip)
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (frame_count(seconds), h, w, 3)
    assert clip.audio.dtype == np.float32 and clip.audio.shape == (2, int(round(seconds * 44100)))
    assert clip.fps == 25 and clip.sample_rate == 44100
    assert set(clip.timings) == TIMING_KEYS
    assert np.isfinite(clip.audio).all()


def test_frame_and_latent_counts():
    # T = round(25 s)//4 + 1 latent frames, F = 4(T-1)+1 frames, Ta = 25 s + 1 audio latents
    assert latent_lengths(1) == (26, 7) and frame_count(1) == 25
    assert latent_lengths(4) == (101, 26) and frame_count(4) == 101
    assert latent_lengths(5) == (126, 32) and frame_count(5) == 125
    assert frame_count(2) == 49


def test_size_for_full_and_tiny(tiny_pipe):
    from model.config import PipelineConfig
    full = HappyHorsePipeline.size_for.__get__(type("P", (), {"config": PipelineConfig()})())
    assert full("256p", "16:9") == (448, 256)
    assert full("540p", "16:9") == (896, 512)
    assert full("1080p", "16:9") == (1920, 1088)
    assert full("256p", "9:16") == (256, 448)
    assert full("256p", "1:1") == (256, 256)
    assert full("256p", "4:5") == (256, 320)
    for res in ("256p", "540p", "1080p"):
        for ar in ("16:9", "9:16", "1:1", "4:5"):
            w, h = tiny_pipe.size_for(res, ar)
            assert w % 32 == 0 and h % 32 == 0
    assert tiny_pipe.size_for("256p", "16:9")[1] == 64
    with pytest.raises(InvalidRequest):
        tiny_pipe.size_for("720p", "16:9")


def test_t2v_distill_shapes_and_reproducible(tiny_pipe):
    a = tiny_pipe(req())
    check_clip(a, tiny_pipe, 1.0)
    b = tiny_pipe(req())
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    c = tiny_pipe(req(seed=4))
    assert not np.array_equal(a.frames, c.frames)


def test_portrait_and_fractional_seconds(tiny_pipe):
    clip = tiny_pipe(req(aspect_ratio="9:16", seconds=0.6))
    check_clip(clip, tiny_pipe, 0.6, aspect="9:16")


def test_languages_exported():
    assert LANGUAGES == ("en", "zh", "yue", "ja", "ko", "de", "fr")


@pytest.mark.parametrize("bad", [
    dict(prompt=""), dict(seconds=0), dict(seconds=1000), dict(seed=-1), dict(resolution="720p"),
    dict(aspect_ratio="2:1"), dict(profile="turbo"), dict(image=np.zeros((8, 8), np.uint8)),
    dict(audio=np.zeros((1, 44100), np.float32)), dict(keep_audio_fixed=True),
    dict(audio=np.zeros((1, 44100), np.float64), audio_sample_rate=44100),
])
def test_invalid_requests(tiny_pipe, bad):
    with pytest.raises(InvalidRequest):
        tiny_pipe(req(**bad))


def test_cancel_between_steps(tiny_pipe):
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(RenderCancelled):
        tiny_pipe(req(), should_stop=should_stop)


def test_text_encoder_no_prepadding_and_cap(tiny_pipe):
    from model.config import PipelineConfig
    enc = tiny_pipe.text_encoder
    assert enc.encode("hello").shape == (len("hello") + 1, 64)        # bytes + </s>, no padding
    assert enc.encode("x" * 5000).shape[0] == tiny_pipe.config.text_max_tokens
    assert PipelineConfig().text_max_tokens == 640


def test_fingerprint_is_stable_and_seeded(tiny_pipe):
    assert len(tiny_pipe.fingerprint) == 64
    assert HappyHorsePipeline.tiny(seed=0).fingerprint == tiny_pipe.fingerprint
    assert HappyHorsePipeline.tiny(seed=1).fingerprint != tiny_pipe.fingerprint


def test_audio_rate_trick_and_resample(tiny_pipe):
    import torch
    from model.codecs import resample_fft
    # 25 latents/s: hop 2048 at the model's 51.2 kHz; Ta latents decode to Ta*2048*441/512 samples at 44.1 kHz
    latent = torch.randn(1, 26, tiny_pipe.dits["distill"].cfg.audio_in_channels)
    assert tiny_pipe.audio_codec.decode(latent).shape == (2, 26 * 1764)
    tone = torch.sin(2 * torch.pi * 1000 * torch.arange(51200, dtype=torch.float64) / 51200)[None]
    out = resample_fft(tone, 51200, 44100)
    assert out.shape == (1, 44100)
    ref = torch.sin(2 * torch.pi * 1000 * torch.arange(44100, dtype=torch.float64) / 44100)
    assert torch.allclose(out[0], ref, atol=1e-6)
