"""Brand adapters on the tiny preset, measured side by side in one run.

    .venv/bin/python benchmarks/adapters.py [--repeats 5] [--rank 16] [--train-steps 12] [--skip-train] [--skip-serving]

Serving (one process, CPU, the tiny preset saved and loaded as a checkpoint folder): a distilled
1 s 256p render without an adapter; the switch a render
makes (`use_adapter`) between two adapters the pipeline already holds, the first load of an
adapter (fit check + peft injection + tensor copy) and back to none; the denoise time per step
with an unmerged adapter versus none; and the naive baseline — reload the pipeline from its
checkpoint folder for each adapter, then apply it (what a tool that folds a LoRA into the weights
must do). Training: Ray Train steps per second with 1 and 2 CPU workers on a private local
cluster (per-step times measured on the worker, first step left out as warm-up).
Fastest of `--repeats` is reported (wall time and this process's CPU time beside it: the machine
is shared and noisy, and CPU time is what load inflates least). Training CPU time is the rank-0
worker's per step.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import Adapter, AdapterConfig, HappyHorsePipeline, RenderRequest  # noqa: E402
from model.adapters import tensor_shapes  # noqa: E402

REQUEST = RenderRequest(prompt="A teal brand field with a warm stripe.", seconds=1.0, seed=3)


def random_adapter(pipe, seed: int, rank: int) -> Adapter:
    cfg = AdapterConfig(rank=rank, alpha=rank, stage="distill", base_fingerprint=pipe.dit_fingerprints["distill"])
    gen = torch.Generator().manual_seed(seed)
    return Adapter(cfg, {k: 0.02 * torch.randn(s, generator=gen) for k, s in tensor_shapes(cfg, pipe.dits["distill"]).items()})


def best(repeats: int, fn) -> tuple[float, float]:
    """(fastest wall time, least CPU time of this process) over `repeats` calls of fn: wall time
    is inflated by other load on a shared machine, CPU time much less so."""
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def bench_serving(folder: Path, repeats: int, rank: int) -> dict[str, tuple[float, float]]:
    """{what: (wall s, CPU s)}."""
    pipe = HappyHorsePipeline.from_pretrained(folder)
    a, b = random_adapter(pipe, 1, rank), random_adapter(pipe, 2, rank)
    steps = pipe.config.distill_steps
    out = {"render_s": best(repeats, lambda: pipe(REQUEST))}
    out["step_none_s"] = _denoise(pipe, repeats, None, steps)
    t0, c0 = time.perf_counter(), time.process_time()
    pipe.use_adapter(a)
    out["first_load_s"] = (time.perf_counter() - t0, time.process_time() - c0)
    pipe.use_adapter(b)
    out["step_adapter_s"] = _denoise(pipe, repeats, a, steps)

    def switch_pair():
        pipe.use_adapter(b)
        pipe.use_adapter(a)
    out["switch_s"] = tuple(v / 2 for v in best(repeats, switch_pair))
    out["to_none_s"] = tuple(v / 2 for v in best(repeats, lambda: (pipe.use_adapter(None), pipe.use_adapter(a))))
    out["reload_s"] = best(repeats, lambda: HappyHorsePipeline.from_pretrained(folder).use_adapter(b))
    out["adapter_mb"] = (a.nbytes / 2**20, 0.0)
    return out


def _denoise(pipe, repeats: int, adapter, steps: int) -> tuple[float, float]:
    """(wall, CPU) per denoise step: the pipeline's own denoise timing, and this process's CPU
    time over the render scaled by the denoise share of its wall time."""
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        clip = pipe(REQUEST, adapter=adapter)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        walls.append(clip.timings["denoise"] / steps)
        cpus.append(cpu * clip.timings["denoise"] / wall / steps)
    return min(walls), min(cpus)


def bench_training(steps: int, workers: tuple[int, ...]) -> dict[int, tuple[float, float]]:
    """{workers: (steps/s wall, CPU s per step on the rank-0 worker)}, first step left out."""
    import ray

    from catalog import Store
    from horse_actors.config import StoreTarget
    from horse_actors.training import AdapterTrainingConfig, train_adapter
    from horse_actors.training_data import ClipToEncode, stored_encodings
    from media.mp4 import encode_mp4
    from model.adapter_training import synthetic_brand_clips

    pipe = HappyHorsePipeline.tiny(seed=0)
    width, height = pipe.size_for("256p", "16:9")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp, "store").as_uri())
        clips = []
        for k, clip in enumerate(synthetic_brand_clips(4, width, height)):
            path = Path(tmp, f"clip{k}.mp4")
            encode_mp4(SimpleNamespace(frames=clip.frames, audio=clip.audio, fps=25, sample_rate=clip.sample_rate), path)
            clips.append(ClipToEncode(path, store.put_blob(str(path)).sha256, clip.caption))
        encodings = [r.blob_uri for r in stored_encodings(store, pipe, clips, width, height)]
        ray.init(num_cpus=max(workers) + 1, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            for n in workers:
                config = AdapterTrainingConfig(rank=4, alpha=4, steps=steps, checkpoint_every=steps)
                result = train_adapter(encodings, StoreTarget(store.url), config, Path(tmp, f"out-{n}"),
                                       num_workers=n, name=f"workers-{n}")
                timed = result.history[1:]
                rates[n] = (len(timed) / sum(h["seconds"] for h in timed), sum(h["cpu_seconds"] for h in timed) / len(timed))
        finally:
            ray.shutdown()
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=12)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-serving", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")     # Ray listens on 127.0.0.1 only

    if not args.skip_serving:
        with tempfile.TemporaryDirectory() as folder:
            HappyHorsePipeline.tiny(seed=0).save_pretrained(folder)     # the reload baseline needs files
            s = bench_serving(Path(folder), args.repeats, args.rank)
        print(f"tiny preset, distilled 1 s 256p, adapter rank {args.rank} on every block linear ({s['adapter_mb'][0]:.2f} MiB)")
        print(f"  {'':34} {'wall':>10}    {'CPU':>10}")

        def row(label: str, key: str, scale: float = 1e3, digits: int = 1, note: str = "") -> None:
            wall, cpu = s[key]
            print(f"  {label:34} {wall * scale:7.{digits}f} ms  {cpu * scale:7.{digits}f} ms  {note}")
        row("render, no adapter", "render_s")
        row("switch between held adapters", "switch_s", digits=3,
            note=f"= {s['switch_s'][0] / s['render_s'][0]:.2%} of a render (CPU {s['switch_s'][1] / s['render_s'][1]:.2%})")
        row("switch to no adapter", "to_none_s", digits=3)
        row("first load of an adapter", "first_load_s", note=f"= {s['first_load_s'][0] / s['render_s'][0]:.1%} of a render")
        row("reload the pipeline per adapter", "reload_s",
            note=f"= {s['reload_s'][0] / s['switch_s'][0]:,.0f}x the switch (CPU {s['reload_s'][1] / max(s['switch_s'][1], 1e-9):,.0f}x)")
        row("denoise step, no adapter", "step_none_s", digits=2)
        row("denoise step, unmerged adapter", "step_adapter_s", digits=2,
            note=f"(+{s['step_adapter_s'][0] / s['step_none_s'][0] - 1:.0%} wall, +{s['step_adapter_s'][1] / s['step_none_s'][1] - 1:.0%} CPU)")
    if not args.skip_train:
        rates = bench_training(args.train_steps, (1, 2))
        print(f"training on Ray Train (CPU workers, {args.train_steps} steps, 1 clip per worker per step)")
        for n, (rate, cpu) in rates.items():
            print(f"  {n} worker(s)                        {rate:9.2f} steps/s  = {rate * n:.2f} clips/s; "
                  f"rank-0 CPU {cpu:.2f} s/step")
        print(f"  2 workers / 1 worker               {rates[2][0] / rates[1][0]:9.2f}x steps/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
