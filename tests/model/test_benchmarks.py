"""The model benchmarks' code paths, exercised on CPU (no timing assertions)."""
import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import require

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_benchmark_exits_cleanly_without_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the real benchmark would run")
    assert load("model_gpu").main([]) == 0
    assert "CUDA is not available" in capsys.readouterr().out


def test_gpu_benchmark_tiny_cpu_smoke(capsys):
    before = torch.get_num_threads()
    try:
        assert load("model_gpu").main(["--device", "cpu", "--tiny", "--warmup", "0"]) == 0
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "distilled" in out and "1080p SR" in out and "local-attention layers" in out


def test_cpu_benchmark_smoke(capsys):
    bench = load("model_cpu")
    monkey_modes = bench.modes
    bench.modes = lambda s: {k: v for k, v in monkey_modes(s).items() if "distill 256p" in k and "t2v" in k}
    assert bench.main(["--seconds", "0.4", "--repeats", "1", "--skip-checkpoint"]) == 0
    out = capsys.readouterr().out
    assert "text_encode" in out and "pipeline overhead" in out


def test_offload_benchmark_replays_real_renders():
    bench = load("model_offload")
    clips = bench.record_sequence(distill_clips=2, seconds=0.4)
    assert [c["resolution"] for c in clips] == ["256p", "256p", "540p"]
    assert clips[0]["forwards"] == {"text_encoder": 1, "distill": 8, "video_vae": 1, "audio_vae": 1}
    assert clips[2]["forwards"]["540p_sr"] == 5
    sizes = {"text_encoder": 18, "distill": 30, "540p_sr": 30, "video_vae": 3, "audio_vae": 1}
    # ours: the second distill clip moves nothing; SR evicts the least recently used (VAEs, text
    # encoder, then the distill DiT when the VAEs come back for decode)
    assert bench.stage_lru(clips, sizes, budget=60) == [52, 0, 86]
    assert bench.model_offload(clips, sizes) == [104, 104, 164]          # everything in and out, every clip
    # weights streamed per forward; the later clips reuse the first one's prompt embedding (encoded
    # once per resident pipeline), so the text encoder is not streamed again
    assert [c["forwards"].get("text_encoder", 0) for c in clips] == [1, 0, 0]
    assert bench.sequential_offload(clips, sizes) == [262, 262 - 18, 412 - 18]


@pytest.mark.slow  # renders a small campaign through the actor
def test_staged_benchmark_smoke(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    assert load("staged").main(["--seconds", "0.4", "--repeats", "1", "--takes", "2", "--campaign-seconds", "0.4",
                                "--campaign-repeats", "1", "--no-s3"]) == 0
    out = capsys.readouterr().out
    assert "staged (2 previews + 1 promote)" in out and "per delivered 1080p clip" in out
    assert "file://" in out and "put MB/s" in out
    assert "store+load" in out and "of the published 31 s H100 stage" in out


@pytest.mark.slow
def test_dialogue_benchmark_smoke(capsys):
    require(shutil.which("flite"), "flite (Debian package `flite`) to synthesise speech")
    assert load("dialogue").main(["--seconds", "1", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "tiny render of a 1 s clip" in out and "pocketsphinx" in out and "whisper" in out
    assert "gate on the encoded clip" in out
