"""Prompt embeddings are computed once per (text encoder, prompt) on a resident pipeline: the
variants of a shot (aspect ratios, takes) reuse the embedding of its prompt."""
import itertools

import pytest
import torch

from model import RenderCancelled, RenderRequest


def test_text_encoder_runs_once_per_distinct_prompt(tiny_pipe):
    """3 shots x 2 languages x 2 aspects x 2 takes = 24 renders of 6 prompts (each stopped right
    after text encoding: the count is the point, not the frames)."""
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
