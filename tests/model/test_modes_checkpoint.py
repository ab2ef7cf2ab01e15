"""Every mode on the tiny preset; checkpoint save/load round trip and refusal of bad checkpoints."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from model import CheckpointError, HappyHorsePipeline, describe_checkpoint
from model.checkpoint import INDEX_NAME
from model.offload import module_bytes

from .test_pipeline import check_clip, req


def test_base_profile_cfg(tiny_pipe):
    clip = tiny_pipe(req(profile="base", seconds=0.6, negative_prompt="blurry, noise"))
    check_clip(clip, tiny_pipe, 0.6)


@pytest.mark.parametrize("resolution", ["540p", "1080p"])
def test_sr_stages(tiny_pipe, resolution):
    clip = tiny_pipe(req(resolution=resolution))
    check_clip(clip, tiny_pipe, 1.0, resolution)
    assert clip.timings["sr"] > 0
    if resolution == "1080p":
        assert tiny_pipe.dits["1080p_sr"].cfg.local_attn_layers


def test_ti2v_first_frame_reimposed(tiny_pipe, monkeypatch):
    from model import sampling
    image = np.random.default_rng(0).integers(0, 255, (90, 200, 3), dtype=np.uint8)
    seen = []
    orig = sampling.velocity

    def spy(dit, video, audio, text):
        seen.append(video[:, :, 0].clone())
        return orig(dit, video, audio, text)

    monkeypatch.setattr(sampling, "velocity", spy)
    w, h = tiny_pipe.size_for("256p", "16:9")
    latent = tiny_pipe._encode_image(image, w, h)
    clip = tiny_pipe(req(image=image))
    check_clip(clip, tiny_pipe, 1.0)
    assert len(seen) == 8 and all(torch.equal(s, latent[:, :, 0]) for s in seen)


def test_ta2v_audio_sets_length_and_can_stay_fixed(tiny_pipe):
    sr = 16000
    audio = (0.1 * np.sin(np.arange(int(1.5 * sr)) / 10)).astype(np.float32)[None]
    clip = tiny_pipe(req(audio=audio, audio_sample_rate=sr, seconds=1.0, keep_audio_fixed=True))
    # 1 s of audio at 51.2 kHz -> 25 latents -> T = 24//4+1 = 7 latent frames -> 25 frames
    assert clip.frames.shape[0] == 25 and clip.audio.shape == (2, 44100)
    again = tiny_pipe(req(audio=audio, audio_sample_rate=sr, seconds=1.0, keep_audio_fixed=True, prompt="Other."))
    assert np.array_equal(clip.audio, again.audio)            # the given audio is not denoised
    moving = tiny_pipe(req(audio=audio, audio_sample_rate=sr, seconds=1.0))
    assert moving.frames.shape[0] == 25 and not np.array_equal(moving.audio, clip.audio)


def test_ta2v_base_never_updates_audio(tiny_pipe):
    sr = 22050
    audio = np.zeros((2, sr), np.float32)
    clip = tiny_pipe(req(audio=audio, audio_sample_rate=sr, profile="base", seconds=0.5, negative_prompt="noise"))
    # 0.5 s -> 25600 samples at 51.2 kHz -> Ta = 12 latents -> T = 11//4+1 = 3 -> 9 frames;
    # decoded audio covers the 12 latents: 12 * 2048 * 441/512 = 21168 samples
    assert clip.frames.shape[0] == 9 and clip.audio.shape == (2, 21168)


# ------------------------------------------------------------------------------------ checkpoints
def test_layout(saved):
    for sub in ("base", "distill", "540p_sr", "1080p_sr", "text_encoder", "tokenizer", "audio_vae", "video_vae"):
        assert (saved / sub).is_dir(), sub
    index = json.loads((saved / "distill" / INDEX_NAME).read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((saved / "distill" / s).exists() for s in shards)
    assert index["metadata"]["total_size"] > 0


def test_round_trip_bit_identical(tiny_pipe, saved):
    loaded = HappyHorsePipeline.from_pretrained(saved, device="cpu")
    assert len(loaded.fingerprint) == 64 and loaded.weight_hashes
    assert HappyHorsePipeline.from_pretrained(saved).fingerprint == loaded.fingerprint
    for r in (req(seed=11), req(seed=11, resolution="540p")):
        a, b = tiny_pipe(r), loaded(r)
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)


def _copy(saved, tmp_path):
    dst = tmp_path / "c"
    shutil.copytree(saved, dst)
    return dst


def _edit_shard(folder, key, fn):
    index = json.loads((folder / INDEX_NAME).read_text())
    shard = folder / index["weight_map"][key]
    state = load_file(str(shard))
    fn(state)
    save_file(state, str(shard))
    return shard.name


def test_missing_tensor_refused(saved, tmp_path):
    ck = _copy(saved, tmp_path)
    key = "block.layers.3.mlp.down_proj.weight"
    _edit_shard(ck / "distill", key, lambda s: s.pop(key))
    index = json.loads((ck / "distill" / INDEX_NAME).read_text())
    index["weight_map"].pop(key)
    (ck / "distill" / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        HappyHorsePipeline.from_pretrained(ck)


def test_misshaped_tensor_refused_naming_key_and_file(saved, tmp_path):
    ck = _copy(saved, tmp_path)
    key = "block.layers.0.attention.linear_qkv.weight"
    name = _edit_shard(ck / "base", key, lambda s: s.__setitem__(key, s[key][:-4].contiguous()))
    with pytest.raises(CheckpointError) as err:
        HappyHorsePipeline.from_pretrained(ck)
    assert key in str(err.value) and name in str(err.value) and "expected" in str(err.value)


def test_missing_shard_and_fingerprint_changes(saved, tmp_path):
    ck = _copy(saved, tmp_path)
    shard = sorted((ck / "540p_sr").glob("model-*.safetensors"))[0]
    data = load_file(str(shard))
    k = next(iter(data))
    data[k] = data[k] + 1
    save_file(data, str(shard))
    assert HappyHorsePipeline.from_pretrained(ck).fingerprint != HappyHorsePipeline.from_pretrained(saved).fingerprint
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        HappyHorsePipeline.from_pretrained(ck)


def test_pickle_needs_opt_in(tiny_pipe, saved, tmp_path):
    ck = _copy(saved, tmp_path)
    shutil.rmtree(ck / "1080p_sr")
    (ck / "1080p_sr").mkdir()
    torch.save(tiny_pipe.dits["1080p_sr"].state_dict(), ck / "1080p_sr" / "model.pt")
    (ck / "1080p_sr" / "config.json").write_text((saved / "1080p_sr" / "config.json").read_text())
    with pytest.raises(CheckpointError, match="allow_pickle"):
        HappyHorsePipeline.from_pretrained(ck)
    pipe = HappyHorsePipeline.from_pretrained(ck, allow_pickle=True)
    assert torch.equal(pipe.dits["1080p_sr"].block.layers[1].mlp.down_proj.weight,
                       tiny_pipe.dits["1080p_sr"].block.layers[1].mlp.down_proj.weight)


def test_partial_stack_and_offload(saved, tmp_path):
    ck = _copy(saved, tmp_path)
    shutil.rmtree(ck / "base")
    shutil.rmtree(ck / "1080p_sr")
    pipe = HappyHorsePipeline.from_pretrained(ck, offload=True, dtype="float32")
    assert pipe.dits["distill"].compute_dtype == torch.float32
    assert pipe.dits["distill"].block.layers[0].attention.linear_qkv.weight.dtype == torch.float32
    check_clip(pipe(req(seconds=0.4)), pipe, 0.4)
    from model import InvalidRequest
    with pytest.raises(InvalidRequest, match="base"):
        pipe(req(profile="base"))
    with pytest.raises(InvalidRequest, match="1080p_sr"):
        pipe(req(resolution="1080p"))
    shutil.rmtree(ck / "text_encoder")
    with pytest.raises(CheckpointError, match="text_encoder"):
        HappyHorsePipeline.from_pretrained(ck)


def test_stage_selection_and_offload_residency(saved):
    pipe = HappyHorsePipeline.from_pretrained(saved, stages=("distill", "540p_sr"), offload=True)
    assert set(pipe.dits) == {"distill", "540p_sr"}
    used = [pipe.text_encoder.model, pipe.dits["distill"], pipe.dits["540p_sr"], pipe.video_codec.vae,
            pipe.audio_codec.vae]
    pipe.offload.budget_bytes = 1 << 40                     # everything fits: all used stages stay resident
    first = pipe(req(seconds=0.4, resolution="540p"))
    assert all(any(m is r for r in pipe.offload.resident) for m in used)
    pipe.offload.resident.clear()
    pipe.offload.budget_bytes = module_bytes(pipe.dits["distill"]) + 1   # one DiT at a time: idle ones leave
    second = pipe(req(seconds=0.4, resolution="540p"))
    assert [id(m) for m in pipe.offload.resident] == [id(pipe.video_codec.vae), id(pipe.audio_codec.vae)]
    assert np.array_equal(first.frames, second.frames)
    with pytest.raises(ValueError, match="720p_sr"):
        HappyHorsePipeline.from_pretrained(saved, stages=("720p_sr",))


def test_request_is_hashable_with_arrays():
    r = req(image=np.zeros((16, 16, 3), np.uint8))
    assert r == req(image=np.ones((16, 16, 3), np.uint8)) and hash(r) == hash(req())


def test_describe_matches_loading_without_reading_tensors(saved):
    described = describe_checkpoint(saved)
    loaded = HappyHorsePipeline.from_pretrained(saved)
    assert described.fingerprint == loaded.fingerprint
    assert described.stages == ("base", "distill", "540p_sr", "1080p_sr")
    for tier in ("256p", "540p", "1080p"):
        assert described.size_for(tier, "9:16") == loaded.size_for(tier, "9:16")
    only_distill = describe_checkpoint(saved, stages=("distill",))
    assert only_distill.fingerprint == HappyHorsePipeline.from_pretrained(saved, stages=("distill",)).fingerprint


def test_large_file_hashes_are_remembered_until_the_file_changes(tmp_path, monkeypatch):
    import os

    from model import checkpoint

    monkeypatch.setattr(checkpoint, "_CACHE_MIN_BYTES", 0)
    monkeypatch.setenv("HORSE_HASH_CACHE", str(tmp_path / "cache.json"))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"a" * 1000)
    first = checkpoint.sha256_file(weights)
    stat = weights.stat()
    weights.write_bytes(b"b" * 1000)                               # same size ...
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))     # ... and mtime: the cache answers
    assert checkpoint.sha256_file(weights) == first
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched: hashed again
    assert checkpoint.sha256_file(weights) != first
