"""Conditioning is encoded once on a resident pipeline: prompt embeddings per (text encoder,
prompt), reference image latents per (VAE, image, size), audio posteriors per (VAE, audio): the
variants of a shot (aspect ratios, takes) reuse them. Renders stopped right after the encoding
(should_stop) when the count is the point, not the frames."""
import itertools

import numpy as np
import pytest
import torch

from model import RenderCancelled, RenderRequest


def test_text_encoder_runs_once_per_distinct_prompt(tiny_pipe):
    """3 shots x 2 languages x 2 aspects x 2 takes = 24 renders of 6 prompts."""
    runs = []
    handle = tiny_pipe.text_encoder.model.register_forward_hook(lambda *_: runs.append(1))
    try:
        for shot, lang, aspect, take in itertools.product(range(3), ("en", "de"), ("16:9", "9:16"), (1, 2)):
            request = RenderRequest(prompt=f"text-cache test: shot {shot} ({lang})", seconds=0.2, seed=take,
                                    aspect_ratio=aspect)
            with pytest.raises(RenderCancelled):
                tiny_pipe(request, should_stop=lambda: True)
    finally:
        handle.remove()
    assert len(runs) == 3 * 2


def test_a_cached_embedding_renders_what_a_fresh_one_does(tiny_pipe):
    request = RenderRequest(prompt="text-cache test: same result", seconds=0.2, seed=3)
    first = tiny_pipe.render_until(request, "base")
    again = tiny_pipe.render_until(request, "base")
    assert torch.equal(first.text, tiny_pipe.text_encoder.encode(request.prompt))
    assert torch.equal(again.text, first.text)
    assert torch.equal(again.video, first.video) and torch.equal(again.audio, first.audio)


def test_reference_image_and_audio_are_encoded_once_per_size(tiny_pipe, monkeypatch):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 200, 3), dtype=np.uint8)
    audio = (0.1 * rng.standard_normal((1, 16000))).astype(np.float32)
    encodes = {"video": 0, "audio": 0}
    for name in encodes:
        vae = getattr(tiny_pipe, f"{name}_codec").vae

        def counted(*args, _real=vae.encode, _name=name, **kwargs):
            encodes[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(vae, "encode", counted)
    for aspect, take in itertools.product(("16:9", "9:16"), (1, 2)):
        request = RenderRequest(prompt="encode-once test: references", seconds=0.5, seed=take, aspect_ratio=aspect,
                                image=image, audio=audio, audio_sample_rate=16000)
        with pytest.raises(RenderCancelled):
            tiny_pipe(request, should_stop=lambda: True)
    assert encodes == {"video": 2, "audio": 1}       # an image latent per frame size, one audio posterior
