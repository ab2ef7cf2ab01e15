"""encode_mp4 with synthetic frames and audio: what a player will see, read back with PyAV."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from media import EncodeCheckError, check_mp4, encode_mp4, poster_jpeg, probe_mp4


def synthetic_clip(frames=25, height=64, width=114, fps=25, rate=44100, seconds=1.0, channels=2):
    """A moving gradient and a 440 Hz tone: easy to recognise after a lossy round trip."""
    y, x = np.mgrid[0:height, 0:width]
    video = np.stack([
        np.stack([(x * 2 + 8 * t) % 256, (y * 3) % 256, np.full_like(x, 128)], axis=-1)
        for t in range(frames)
    ]).astype(np.uint8)
    t = np.arange(int(rate * seconds)) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    audio = np.stack([tone] * channels)
    return SimpleNamespace(frames=video, audio=audio, fps=fps, sample_rate=rate)


TAGS = {"render_key": "k" * 64, "campaign_id": "spring-26", "shot_id": "s010", "variant": "en-16x9-t1",
        "seed": "42", "model_fingerprint": "f" * 64}


def test_mp4_plays_back_with_size_duration_audio_and_tags(tmp_path):
    clip = synthetic_clip()
    path = tmp_path / "a.mp4"
    info = encode_mp4(clip, path, TAGS)

    assert (info.width, info.height, info.frames) == (114, 64, 25)
    assert info.faststart
    with av.open(str(path)) as box:
        assert {k: box.metadata.get(k) for k in TAGS} == TAGS
        video, audio = box.streams.video[0], box.streams.audio[0]
        assert video.codec_context.name == "h264"
        assert video.codec_context.pix_fmt == "yuv420p"
        cc = video.codec_context
        assert (cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range) == (1, 1, 1, 1)
        assert (audio.codec_context.name, audio.codec_context.sample_rate, audio.codec_context.channels) == ("aac", 48000, 2)
        decoded = [f.to_ndarray(format="rgb24") for f in box.decode(video=0)]
    assert len(decoded) == 25
    assert abs(info.video_seconds - 1.0) < 0.041 and abs(info.audio_seconds - 1.0) < 0.05
    # BT.709 in, BT.709 out: colours survive the round trip (lossy, so only roughly)
    assert np.abs(decoded[12].astype(int) - clip.frames[12][:, :114].astype(int)).mean() < 6


def test_odd_sizes_are_cropped_to_even_and_mono_audio_becomes_stereo(tmp_path):
    clip = synthetic_clip(height=63, width=115, channels=1, rate=24000)
    info = encode_mp4(clip, tmp_path / "odd.mp4")
    assert (info.width, info.height) == (114, 62)
    assert (info.audio_rate, info.audio_channels) == (48000, 2)


def test_same_clip_and_tags_give_identical_bytes(tmp_path):
    """A retried render must map to the same content-addressed blob."""
    clip = synthetic_clip()
    encode_mp4(clip, tmp_path / "a.mp4", TAGS)
    encode_mp4(clip, tmp_path / "b.mp4", TAGS)
    digest = lambda name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()  # noqa: E731
    assert digest("a.mp4") == digest("b.mp4")


def test_check_rejects_a_file_that_does_not_match(tmp_path):
    encode_mp4(synthetic_clip(), tmp_path / "a.mp4")
    with pytest.raises(EncodeCheckError, match="video frames"):
        check_mp4(tmp_path / "a.mp4", frames=30, width=114, height=64, fps=25, audio_seconds=1.0)
    with pytest.raises(EncodeCheckError, match="audio lasts"):
        check_mp4(tmp_path / "a.mp4", frames=25, width=114, height=64, fps=25, audio_seconds=2.0)


def test_without_faststart_the_check_fails(tmp_path):
    path = tmp_path / "slow.mp4"
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    assert not probe_mp4(path).faststart


def test_poster_is_a_small_jpeg():
    data = poster_jpeg(synthetic_clip(height=720, width=1280, frames=3).frames, max_side=256)
    assert data[:3] == b"\xff\xd8\xff"
    from io import BytesIO

    from PIL import Image

    assert max(Image.open(BytesIO(data)).size) == 256


def test_bytes_do_not_depend_on_the_machines_core_count(tmp_path):
    """x264's output depends on its thread count; left on auto, that follows the CPUs a process may
    use, and the same render would get another blob sha256 on another machine."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs to compare against a process pinned to one")
    clip = synthetic_clip(height=256, width=448)
    np.savez(tmp_path / "clip.npz", frames=clip.frames, audio=clip.audio)
    encode_mp4(clip, tmp_path / "here.mp4", TAGS)
    child = (
        "import json, os, sys, numpy as np; from types import SimpleNamespace; from media import encode_mp4;"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
        "d = np.load(sys.argv[1]);"
        "encode_mp4(SimpleNamespace(frames=d['frames'], audio=d['audio'], fps=25, sample_rate=44100), sys.argv[2], json.loads(sys.argv[3]))"
    )
    subprocess.run([sys.executable, "-c", child, str(tmp_path / "clip.npz"), str(tmp_path / "one_cpu.mp4"), json.dumps(TAGS)],
                   check=True, cwd=Path(__file__).resolve().parents[2])
    assert (tmp_path / "here.mp4").read_bytes() == (tmp_path / "one_cpu.mp4").read_bytes()
