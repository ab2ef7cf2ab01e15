"""Jobs and checks shared by the Ray tests (tiny real model, real catalog store)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlsplit

import av

from catalog import render_key
from horse_actors import ModelSpec, PoolConfig, RenderJob, Scheduling, StoreTarget
from model import RenderRequest

SECONDS = 1.0
FRAMES = 25            # model.frame_count(1.0)
TINY_SIZES = {"16:9": (128, 64), "9:16": (64, 128)}  # HappyHorsePipeline.tiny().size_for("256p", ...)
TINY_540P_16x9 = (160, 96)                           # HappyHorsePipeline.tiny().size_for("540p", "16:9")


def make_jobs(n: int, campaign: str = "spring-26", *, seconds: float = SECONDS,
              overrides: dict[int, dict] | None = None) -> list[RenderJob]:
    """n one-second jobs alternating 16:9 and 9:16; `overrides` changes request fields of job i."""
    overrides = overrides or {}
    jobs = []
    for i in range(n):
        aspect = "16:9" if i % 2 == 0 else "9:16"
        fields = {"prompt": f"a horse gallops across a beach, take {i}", "seconds": seconds, "seed": 1000 + i,
                  "aspect_ratio": aspect, **overrides.get(i, {})}
        request = RenderRequest(**fields)
        key = render_key({"campaign": campaign, "shot": f"s{i:03d}", "prompt": request.prompt,
                          "seed": request.seed, "aspect": aspect, "seconds": seconds,
                          **{k: str(v) for k, v in overrides.get(i, {}).items()}})
        jobs.append(RenderJob(render_key=key, request=request, campaign_id=campaign, shot_id=f"s{i:03d}",
                              variant=f"en-{aspect.replace(':', 'x')}-t1", metadata={"language": "en"}))
    return jobs


def pool_config(store_url: str, **scheduling) -> PoolConfig:
    """Small clips, short warm-up; the fixture's cluster has 2 fake GPUs -> 2 actors."""
    return PoolConfig(ModelSpec("tiny", warmup_seconds=0.4), StoreTarget(store_url),
                      scheduling=Scheduling(job_deadline_s=300, **scheduling))


def local_path(uri: str) -> Path:
    return Path(urlsplit(uri).path)


def assert_plays_back(outcome, job: RenderJob) -> None:
    """The stored mp4 has the job's size, frame count, duration, 48 kHz stereo audio and tags."""
    width, height = TINY_SIZES[job.request.aspect_ratio]
    path = local_path(outcome.blob_uri)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == outcome.sha256 == path.name.split(".")[0]
    with av.open(str(path)) as box:
        video, audio = box.streams.video[0], box.streams.audio[0]
        assert (video.codec_context.width, video.codec_context.height) == (width, height)
        assert video.frames == FRAMES
        assert abs(float(video.duration * video.time_base) - FRAMES / 25) < 0.041
        assert (audio.codec_context.sample_rate, audio.codec_context.channels) == (48000, 2)
        assert abs(float(audio.duration * audio.time_base) - job.request.seconds) < 0.05
        assert box.metadata["render_key"] == job.render_key
        assert box.metadata["shot_id"] == job.shot_id
        assert box.metadata["seed"] == str(job.request.seed)
        decoded = sum(1 for _ in box.decode(video=0))
    assert decoded == FRAMES
    assert (outcome.width, outcome.height, outcome.frames) == (width, height, FRAMES)
    assert local_path(outcome.poster_uri).read_bytes()[:3] == b"\xff\xd8\xff"


def blob_files(store_url: str) -> dict[str, list[Path]]:
    """Every file under the store's blobs/ folder, grouped as final blobs (clips, posters, stage
    results) and leftovers."""
    root = local_path(store_url) / "blobs"
    files = [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
    final = [p for p in files if not p.name.startswith(".")]
    kinds = (".mp4", ".jpg", ".safetensors")
    return {**{kind[1:]: [p for p in final if p.suffix == kind] for kind in kinds},
            "other": [p for p in files if p not in final or p.suffix not in kinds]}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
