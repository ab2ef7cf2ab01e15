"""Checkpoint reading in one pass: shard digests come from the bytes read for the weights (or from
the per-machine digest cache), and a damaged shard is refused naming it."""
import hashlib
import json
import shutil

import pytest

from model import CheckpointError, HappyHorsePipeline, checkpoint, describe_checkpoint


def dit_shards(folder):
    return sorted(folder.glob("*/model-*.safetensors"))


def test_dit_shards_are_hashed_while_loading_not_in_a_second_pass(saved, monkeypatch):
    expected = describe_checkpoint(saved).fingerprint
    hashed_apart = []
    real = checkpoint.sha256_file
    monkeypatch.setattr(checkpoint, "sha256_file", lambda path: hashed_apart.append(path) or real(path))
    pipe = HappyHorsePipeline.from_pretrained(saved)
    assert pipe.fingerprint == expected
    assert hashed_apart and not set(hashed_apart) & set(dit_shards(saved))


def test_the_digest_cache_answers_for_a_shard_it_knows(saved, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "_CACHE_MIN_BYTES", 0)
    monkeypatch.setenv("HORSE_HASH_CACHE", str(tmp_path / "digests.json"))
    HappyHorsePipeline.from_pretrained(saved, stages=("distill",))
    cache = json.loads((tmp_path / "digests.json").read_text())
    shard = sorted((saved / "distill").glob("model-*.safetensors"))[0]
    key = next(k for k in cache if k.startswith(f"{shard.resolve()}|"))
    assert cache[key] == hashlib.sha256(shard.read_bytes()).hexdigest()     # remembered while loading
    cache[key] = "c" * 64                                                   # same file identity, other digest
    (tmp_path / "digests.json").write_text(json.dumps(cache))
    pipe = HappyHorsePipeline.from_pretrained(saved, stages=("distill",))
    assert pipe.weight_hashes[f"distill/{shard.name}"] == "c" * 64           # the cache answered: not re-hashed


def test_a_truncated_shard_is_refused_naming_it(saved, tmp_path):
    ck = tmp_path / "c"
    shutil.copytree(saved, ck)
    shard = sorted((ck / "base").glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=rf"{shard.name}.*truncated"):
        HappyHorsePipeline.from_pretrained(ck)
