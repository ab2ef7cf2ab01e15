"""Staged renders on the tiny preset: stop after a stage, store the result as bytes, start a fresh
pipeline from it, bit-identical to a straight render; stage keys name only the stages used."""
import json

import numpy as np
import pytest
from safetensors.torch import load, save

from model import (HappyHorsePipeline, InvalidRequest, RenderRequest, StageResult, StageResultError, describe_checkpoint,
                   describe_tiny, stage_key_inputs)

from .test_pipeline import req

AUDIO_RATE = 16000
IMAGE = np.random.default_rng(0).integers(0, 255, (90, 200, 3), dtype=np.uint8)
AUDIO = (0.1 * np.sin(np.arange(int(1.5 * AUDIO_RATE)) / 10)).astype(np.float32)[None]
MODES = {
    "distill": {},
    "base+cfg": {"profile": "base", "negative_prompt": "blurry"},
    "ti2v": {"image": IMAGE},
    "ta2v": {"audio": AUDIO, "audio_sample_rate": AUDIO_RATE, "keep_audio_fixed": True},
}


@pytest.fixture(scope="module")
def fresh_pipe():
    """A second pipeline object of the same model: resumes must not lean on the first one's state."""
    return HappyHorsePipeline.tiny(seed=0)


def same_clip(a, b):
    return np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)


@pytest.mark.parametrize("mode", list(MODES))
def test_preview_base_result_finishes_every_target_bit_identically(tiny_pipe, fresh_pipe, mode):
    """One 256p preview's base result, stored as bytes, finishes 256p, 540p and 1080p in a fresh
    pipeline exactly as straight renders of those sizes (540p by way of a stored sr result too)."""
    preview = req(aspect_ratio="1:1", **MODES[mode])          # square: the smallest frames to decode
    stored = tiny_pipe.render_until(preview, "base")
    assert stored.stages_run == ("base",) and stored.timings["denoise"] > 0
    data = stored.to_bytes()
    for resolution in ("256p", "540p", "1080p"):
        r = req(resolution=resolution, aspect_ratio="1:1", **MODES[mode])
        straight = tiny_pipe(r)
        assert straight.stages_run == (("base", "decode") if resolution == "256p" else ("base", "sr", "decode"))
        if resolution == "540p":          # stop after sr too, store it, decode it in the other pipeline
            sr = fresh_pipe.render_until(r, "sr", start=StageResult.from_bytes(data))
            assert sr.stages_run == ("sr",) and sr.text is None and sr.generator_state is None
            resumed = tiny_pipe(r, start=StageResult.from_bytes(sr.to_bytes()))
        else:
            resumed = fresh_pipe(r, start=StageResult.from_bytes(data))
            assert resumed.stages_run == straight.stages_run[1:]
        assert same_clip(straight, resumed), (mode, resolution)
        assert resumed.timings["text_encode"] == resumed.timings["denoise"] == 0.0


def test_ta2v_base_result_keeps_the_given_audio(tiny_pipe):
    """With keep_audio_fixed the stored audio latent is the encoded reference, not a denoised one."""
    fixed = tiny_pipe.render_until(req(**MODES["ta2v"]), "base")
    other = tiny_pipe.render_until(req(**MODES["ta2v"], prompt="Another scene."), "base")
    moving = tiny_pipe.render_until(req(audio=AUDIO, audio_sample_rate=AUDIO_RATE), "base")
    assert fixed.audio.equal(other.audio) and not fixed.audio.equal(moving.audio)
    assert not fixed.video.equal(other.video)


def test_sr_draws_from_the_generator_state_after_base(tiny_pipe):
    """The stored state is the generator after exactly the base stage's draws, in the spec's order
    (audio noise, video noise, then video and audio per re-noising step), and sr goes on from it."""
    import dataclasses

    import torch

    from model.sampling import noise
    r = req(resolution="540p")
    base = tiny_pipe.render_until(r, "base")
    gen = torch.Generator().manual_seed(r.seed)
    noise(base.audio.shape, gen)
    noise(base.video.shape, gen)
    for _ in range(tiny_pipe.config.distill_steps - 1):            # the last step does not re-noise
        noise(base.video.shape, gen)
        noise(base.audio.shape, gen)
    assert torch.equal(base.generator_state, gen.get_state())
    reseeded = dataclasses.replace(base, generator_state=torch.Generator().manual_seed(r.seed).get_state())
    from_state_after_base = tiny_pipe.render_until(r, "sr", start=base).video
    assert not tiny_pipe.render_until(r, "sr", start=reseeded).video.equal(from_state_after_base)


def test_stage_keys_name_only_the_stages_used(tiny_pipe):
    fps = tiny_pipe.stage_fingerprints
    assert describe_tiny(0).stage_fingerprints == fps
    keys = {res: stage_key_inputs(req(resolution=res), "base", fps) for res in ("256p", "540p", "1080p")}
    assert keys["256p"] == keys["540p"] == keys["1080p"]                 # a preview's base promotes to any size
    assert set(keys["256p"]["fingerprints"]) == {"distill", "text_encoder", "tokenizer", "pipeline"}
    assert set(stage_key_inputs(req(profile="base"), "base", fps)["fingerprints"]) == {
        "base", "text_encoder", "tokenizer", "pipeline"}
    assert "video_vae" in stage_key_inputs(req(image=IMAGE), "base", fps)["fingerprints"]
    assert "audio_vae" in stage_key_inputs(req(**MODES["ta2v"]), "base", fps)["fingerprints"]
    sr = stage_key_inputs(req(resolution="1080p"), "sr", fps)
    assert set(sr["fingerprints"]) == {"distill", "1080p_sr", "text_encoder", "tokenizer", "pipeline"}
    assert sr["resolution"] == "1080p" and sr != stage_key_inputs(req(resolution="540p"), "sr", fps)
    decode = stage_key_inputs(req(), "decode", fps)
    assert set(decode["fingerprints"]) == {"distill", "text_encoder", "tokenizer", "pipeline", "video_vae", "audio_vae"}
    # every input that changes the base latent changes its key inputs; the distill profile ignores the negative prompt
    for change in (dict(seed=4), dict(prompt="B."), dict(seconds=2.0), dict(aspect_ratio="9:16"),
                   dict(image=IMAGE[:, ::-1].copy()), dict(profile="base")):
        assert stage_key_inputs(req(**change), "base", fps) != stage_key_inputs(req(image=IMAGE), "base", fps), change
    assert stage_key_inputs(req(negative_prompt="x"), "base", fps) == keys["256p"]
    assert json.loads(json.dumps(keys["256p"])) == keys["256p"]          # plain JSON: the caller hashes it
    with pytest.raises(InvalidRequest, match="no 'sr' stage"):
        stage_key_inputs(req(), "sr", fps)


def test_stage_keys_name_the_adapter_and_its_strength_and_without_one_are_as_before_adapters():
    from catalog import render_key

    fps = describe_tiny(0).stage_fingerprints
    r = RenderRequest("A horse.", 1.0, 1, resolution="540p")
    # the keys of main before brand adapters existed (no adapter: nothing in the key changes)
    assert {stage: render_key(stage_key_inputs(r, stage, fps)) for stage in ("base", "sr", "decode")} == {
        "base": "2afa1aa75099ade4c8093f887135fc7c3185ba3a8a2acfc2f61f85182908e2e9",
        "sr": "c648b8e07255ccd161b2d40896f81c75e50e5e9f694a346dfeccbee2873dbfa4",
        "decode": "7b37cb239a6195065d365bda4805c52e9e407ec1596f821e00539d7c8d5e2ba8"}
    for stage in ("base", "sr", "decode"):
        keys = {render_key(stage_key_inputs(r, stage, fps, sha, strength))
                for sha, strength in ((None, 1.0), ("a" * 64, 1.0), ("b" * 64, 1.0), ("a" * 64, 0.5))}
        assert len(keys) == 4, stage
        assert stage_key_inputs(r, stage, fps, "a" * 64, 1) == stage_key_inputs(r, stage, fps, "a" * 64, 1.0)
    with pytest.raises(InvalidRequest, match="adapter_strength must be a finite number"):
        stage_key_inputs(r, "base", fps, "a" * 64, float("inf"))


def test_checkpoint_stage_fingerprints_change_only_for_the_changed_stage(saved, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file
    ck = tmp_path / "c"
    shutil.copytree(saved, ck)
    shard = sorted((ck / "540p_sr").glob("model-*.safetensors"))[0]
    tensors = load_file(str(shard))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1
    save_file(tensors, str(shard))
    before, after = describe_checkpoint(saved).stage_fingerprints, describe_checkpoint(ck).stage_fingerprints
    assert HappyHorsePipeline.from_pretrained(ck, stages=("distill", "540p_sr")).stage_fingerprints == \
        describe_checkpoint(ck, stages=("distill", "540p_sr")).stage_fingerprints
    assert {s for s in before if before[s] != after[s]} == {"540p_sr"}
    assert set(before) == {"base", "distill", "540p_sr", "1080p_sr", "text_encoder", "tokenizer", "video_vae",
                           "audio_vae", "pipeline"}
    r = req(resolution="540p")
    assert stage_key_inputs(r, "base", before) == stage_key_inputs(r, "base", after)
    assert stage_key_inputs(r, "sr", before) != stage_key_inputs(r, "sr", after)


@pytest.fixture(scope="module")
def base_bytes(tiny_pipe):
    return tiny_pipe.render_until(req(resolution="540p"), "base").to_bytes()


def test_resume_refuses_another_request_model_or_device(tiny_pipe, base_bytes):
    with pytest.raises(StageResultError, match=r"another request: seed is 3 there, 4 here"):
        tiny_pipe(req(seed=4), start=StageResult.from_bytes(base_bytes))
    with pytest.raises(StageResultError, match=r"another model: stage fingerprint\(s\) differ: distill \("):
        HappyHorsePipeline.tiny(seed=1)(req(), start=StageResult.from_bytes(base_bytes))
    moved = StageResult.from_bytes(base_bytes)
    moved.device_type = "cuda"
    with pytest.raises(StageResultError, match="made on cuda; this pipeline runs on cpu"):
        tiny_pipe(req(), start=moved)
    sr = tiny_pipe.render_until(req(resolution="540p"), "sr", start=StageResult.from_bytes(base_bytes))
    with pytest.raises(StageResultError, match="'sr' stage result cannot start a 256p render"):
        tiny_pipe(req(), start=sr)
    with pytest.raises(InvalidRequest, match="already past 'sr'"):
        tiny_pipe.render_until(req(resolution="540p"), "sr", start=sr)
    with pytest.raises(InvalidRequest, match="256p render has no 'sr' stage"):
        tiny_pipe.render_until(req(), "sr")


def test_from_bytes_names_what_is_wrong(base_bytes):
    tensors = load(base_bytes)
    meta = json.loads(base_bytes[8:8 + int.from_bytes(base_bytes[:8], "little")])["__metadata__"]
    cases = [
        (b"not safetensors", "not safetensors bytes"),
        (save(tensors), "not a Horse stage result"),
        (save(tensors, metadata={**meta, "version": "0"}), "version '0'"),
        (save(tensors, metadata={**meta, "stage": "decode"}), "stage 'decode' is not one of"),
        (save(tensors, metadata={**meta, "key_inputs": "{"}), "key_inputs is not JSON"),
        (base_bytes[:-100], "unreadable tensors"),
        (save({k: v for k, v in tensors.items() if k != "generator_state"}, metadata=meta),
         r"holds tensors \['audio', 'text', 'video'\], expected"),
        (save({**tensors, "video": tensors["video"].double()}, metadata=meta), "video is torch.float64"),
        (save({**tensors, "text": tensors["text"].float()}, metadata=meta),
         "text is torch.float32 .* expected torch.float16"),
        (save({**tensors, "audio": tensors["audio"][:, :5]}, metadata=meta), "do not belong to one clip"),
    ]
    for data, message in cases:
        with pytest.raises(StageResultError, match=message):
            StageResult.from_bytes(data)
