"""Brand-adapter training: clip encodings stored in the catalog and reused (no encoder call the
second time), and on the session Ray cluster (Ray Train TorchTrainer, CPU workers) with an S3
store: the trained adapter lowers the loss and changes the render, reads back identically on a
fresh pipeline, its checkpoints are on S3 and a new driver resumes from them. (A killed run
resuming from its checkpoint: tests/cli/test_adapter_train_command.py.)"""
import dataclasses
import io
import json
import os
import pickle
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catalog import Store, public_options
from horse_actors.config import StoreTarget
from horse_actors.training import AdapterTrainingConfig, checkpoint_storage, train_adapter
from horse_actors.training_data import ClipToEncode, load_encoding, stored_encodings
from media.mp4 import encode_mp4
from model import Adapter, HappyHorsePipeline, RenderRequest
from model.adapter_training import synthetic_brand_clips

REQ = RenderRequest(prompt="A teal brand field with a warm stripe.", seconds=0.4, seed=7)


def write_brand_clips(folder: Path, n: int = 3) -> list[ClipToEncode]:
    """`n` synthetic brand clips as mp4 files with a `<name>.txt` caption beside each (the
    layout `horse adapter train --clips` reads), at the tiny preset's 256p 16:9 size."""
    pipe_size = HappyHorsePipeline.tiny(seed=0).size_for("256p", "16:9")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, clip in enumerate(synthetic_brand_clips(n, *pipe_size, seconds=0.4)):
        path = folder / f"take{k + 1}.mp4"
        encode_mp4(types.SimpleNamespace(frames=clip.frames, audio=clip.audio, fps=25, sample_rate=clip.sample_rate), path)
        path.with_suffix(".txt").write_text(clip.caption)
        out.append(ClipToEncode(path, Store(folder.as_uri()).blobs.put(str(path)).sha256, clip.caption))
    return out


class EncoderCalls:
    """Counts the calls of the pipeline's three encoders (the real ones run)."""

    def __init__(self, pipe):
        self.calls = {"video_vae": 0, "audio_vae": 0, "text_encoder": 0}
        for name, owner in (("video_vae", pipe.video_codec), ("audio_vae", pipe.audio_codec), ("text_encoder", pipe.text_encoder)):
            original = owner.encode

            def counted(*args, _name=name, _original=original, **kwargs):
                self.calls[_name] += 1
                return _original(*args, **kwargs)
            owner.encode = counted


@pytest.fixture(scope="module")
def brand(tmp_path_factory):
    """The tiny pipeline and three synthetic brand clips (mp4 files with captions)."""
    pipe = HappyHorsePipeline.tiny(seed=0)
    return pipe, write_brand_clips(tmp_path_factory.mktemp("clips"))


def test_encodings_are_stage_results_reused_by_a_second_run(brand, tmp_store):
    pipe, clips = brand
    width, height = pipe.size_for("256p", "16:9")
    counter = EncoderCalls(pipe)
    first = stored_encodings(Store(tmp_store), pipe, clips, width, height, made_by={"run_id": "first"})
    assert counter.calls == {"video_vae": 3, "audio_vae": 3, "text_encoder": 3}

    # a second run (another Store on the same root, as on another node): read back, nothing encoded
    again = stored_encodings(Store(tmp_store), pipe, clips, width, height, made_by={"run_id": "second"})
    assert counter.calls == {"video_vae": 3, "audio_vae": 3, "text_encoder": 3}
    assert [r.blob_uri for r in again] == [r.blob_uri for r in first] and len({r.stage_key for r in first}) == 3
    assert {r.stage for r in again} == {"encoding"} and {r.made_by["run_id"] for r in again} == {"first"}
    tensors = load_encoding(Store(tmp_store), first[0].blob_uri)
    assert set(tensors) == {"video", "audio", "text"} and tensors["video"].ndim == 5

    # the caption is part of the key: a new caption is a new encoding (one more call of each encoder)
    recaptioned = ClipToEncode(clips[0].path, clips[0].sha256, clips[0].caption + " At dusk.")
    (new,) = stored_encodings(Store(tmp_store), pipe, [recaptioned], width, height)
    assert new.stage_key not in {r.stage_key for r in first}
    assert counter.calls == {"video_vae": 4, "audio_vae": 4, "text_encoder": 4}


def test_s3_checkpoint_storage_carries_no_credentials(s3_server):
    target = StoreTarget("s3://horse-test/ckpt", public_options(s3_server["storage_options"]))
    path, filesystem, uri = checkpoint_storage(target, "teal-0123")
    assert path == "horse-test/ckpt/training" and uri == "s3://horse-test/ckpt/training/teal-0123"
    assert filesystem.region == "us-east-1"
    pickled = pickle.dumps(filesystem)        # what Ray hands to the trainer and its workers
    assert os.environ["AWS_SECRET_ACCESS_KEY"].encode() not in pickled
    assert os.environ["AWS_ACCESS_KEY_ID"].encode() not in pickled
    with pytest.raises(ValueError, match="file:// or s3://"):
        checkpoint_storage(StoreTarget("memory://somewhere"), "teal")


@pytest.mark.slow
def test_trained_adapter_lowers_the_loss_changes_the_render_reloads_and_resumes_from_s3(
        ray_cluster, brand, s3_server, tmp_path):
    pipe, clips = brand
    url = f"s3://{s3_server['bucket']}/train-{tmp_path.name}"
    store = Store(url, s3_server["storage_options"])
    width, height = pipe.size_for("256p", "16:9")
    encodings = [r.blob_uri for r in stored_encodings(store, pipe, clips, width, height)]
    target = StoreTarget(url, public_options(s3_server["storage_options"]))
    config = AdapterTrainingConfig(rank=4, alpha=4, steps=8, checkpoint_every=4, learning_rate=5e-3)
    result = train_adapter(encodings, target, config, tmp_path / "out", num_workers=2, name="teal")

    assert result.final_loss < result.initial_loss
    assert [h["step"] for h in result.history] == list(range(1, 9)) and result.resumed_from == []
    base, tuned = pipe(REQ), pipe(REQ, adapter=result.adapter)
    assert not np.array_equal(base.frames, tuned.frames)

    reloaded = Adapter.load(result.files["adapter"])
    assert reloaded.sha256 == result.adapter.sha256
    again = HappyHorsePipeline.tiny(seed=0)(REQ, adapter=reloaded)
    assert np.array_equal(again.frames, tuned.frames) and np.array_equal(again.audio, tuned.audio)

    summary = json.loads(result.files["history"].read_text())
    assert summary["adapter_sha256"] == reloaded.sha256 and len(summary["history"]) == 8
    assert Image.open(io.BytesIO(result.files["plot"].read_bytes())).format == "PNG"

    # the checkpoints are in the store on S3, and a new driver (a later call) resumes from them
    assert result.checkpoints == f"{url}/training/teal"
    assert any("checkpoint_" in k for k in store.root.list_files("training/teal"))
    longer = train_adapter(encodings, target, dataclasses.replace(config, steps=10),
                           tmp_path / "out2", num_workers=2, name="teal")
    assert longer.resumed_from == [8] and [h["step"] for h in longer.history] == list(range(1, 11))
    assert longer.history[:8] == result.history
