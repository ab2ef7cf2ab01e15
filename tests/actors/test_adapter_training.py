"""Brand-adapter training on the session Ray cluster (Ray Train TorchTrainer, CPU workers): the
trained adapter lowers the loss and changes the render, reads back identically on a fresh
pipeline, and a run whose worker is killed resumes from its last checkpoint."""
import io
import json
import os
import threading
import time

import numpy as np
import psutil
import pytest
from PIL import Image

from horse_actors.training import AdapterTrainingConfig, train_adapter
from model import Adapter, HappyHorsePipeline, RenderRequest
from model.adapter_training import cache_encodings, synthetic_brand_clips

pytestmark = pytest.mark.slow

REQ = RenderRequest(prompt="A teal brand field with a warm stripe.", seconds=0.4, seed=7)


@pytest.fixture(scope="module")
def brand(tmp_path_factory):
    """The tiny pipeline and three synthetic brand clips encoded once into a cache folder."""
    pipe = HappyHorsePipeline.tiny(seed=0)
    width, height = pipe.size_for("256p", "16:9")
    clips = synthetic_brand_clips(3, width, height)
    return pipe, clips, cache_encodings(pipe, clips, tmp_path_factory.mktemp("encodings"))


def test_encodings_are_cached_by_content(brand):
    pipe, clips, paths = brand
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert cache_encodings(pipe, clips, paths[0].parent) == paths and len(set(paths)) == 3
    assert [p.stat().st_mtime_ns for p in paths] == stamps          # read back, not encoded again


def test_trained_adapter_lowers_the_loss_changes_the_render_and_reloads_identically(ray_cluster, brand, tmp_path):
    pipe, _, paths = brand
    config = AdapterTrainingConfig(rank=4, alpha=4, steps=8, checkpoint_every=4, learning_rate=5e-3)
    result = train_adapter(paths, tmp_path, config, num_workers=2, name="teal")

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


def _our_train_workers() -> list[psutil.Process]:
    """Ray Train worker processes of the session cluster (started under this pytest process)."""
    return [p for p in psutil.Process(os.getpid()).children(recursive=True)
            if "RayTrainWorker" in " ".join(p.cmdline())]


def _kill_worker_once_a_checkpoint_is_registered(run_dir, done: threading.Event, killed: list) -> None:
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    while not done.wait(0.05):
        try:
            latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if latest:
            for proc in _our_train_workers():
                proc.kill()
                killed.append((proc.pid, latest["metrics"]["step"]))
            return


def test_killed_worker_resumes_from_its_last_checkpoint(ray_cluster, brand, tmp_path):
    _, _, paths = brand
    steps = 40
    config = AdapterTrainingConfig(rank=2, alpha=2, steps=steps, checkpoint_every=2, learning_rate=1e-3,
                                   targets=("linear_qkv",))
    done, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_worker_once_a_checkpoint_is_registered,
                              args=(tmp_path / "killed", done, killed), daemon=True)
    killer.start()
    try:
        result = train_adapter(paths, tmp_path, config, num_workers=1, max_failures=1, name="killed")
    finally:
        done.set()
        killer.join()

    assert killed, "the worker was not killed mid-run"
    (resumed,) = result.resumed_from
    assert killed[0][1] <= resumed < steps                 # from the last checkpoint, not from scratch
    assert [h["step"] for h in result.history] == list(range(1, steps + 1))
