"""Brand adapters on the tiny preset, measured side by side in one run.

    .venv/bin/python benchmarks/adapters.py [--repeats 5] [--rank 16] [--train-steps 12] [--skip-train]

Serving (one process, CPU, the tiny preset saved and loaded as a checkpoint folder): a distilled
1 s 256p render without an adapter; the switch a render
makes (`use_adapter`) between two adapters the pipeline already holds, the first load of an
adapter (fit check + peft injection + tensor copy) and back to none; the denoise time per step
with an unmerged adapter versus none; and the naive baseline — reload the pipeline from its
checkpoint folder for each adapter, then apply it (what a tool that folds a LoRA into the weights
must do). Training: Ray Train steps per second with 1 and 2 CPU workers on a private local
cluster (per-step times measured on the worker, first step left out as warm-up).
Fastest of `--repeats` is reported: this machine is shared and noisy.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import Adapter, AdapterConfig, HappyHorsePipeline, RenderRequest  # noqa: E402
from model.adapters import tensor_shapes  # noqa: E402

REQUEST = RenderRequest(prompt="A teal brand field with a warm stripe.", seconds=1.0, seed=3)


def random_adapter(pipe, seed: int, rank: int) -> Adapter:
    cfg = AdapterConfig(rank=rank, alpha=rank, stage="distill", base_fingerprint=pipe.dit_fingerprints["distill"])
    gen = torch.Generator().manual_seed(seed)
    return Adapter(cfg, {k: 0.02 * torch.randn(s, generator=gen) for k, s in tensor_shapes(cfg, pipe.dits["distill"]).items()})


def best(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_serving(folder: Path, repeats: int, rank: int) -> dict[str, float]:
    pipe = HappyHorsePipeline.from_pretrained(folder)
    a, b = random_adapter(pipe, 1, rank), random_adapter(pipe, 2, rank)
    steps = pipe.config.distill_steps
    out = {"render_s": best(repeats, lambda: pipe(REQUEST))}
    out["step_none_s"] = min(pipe(REQUEST).timings["denoise"] for _ in range(repeats)) / steps
    t0 = time.perf_counter()
    pipe.use_adapter(a)
    out["first_load_s"] = time.perf_counter() - t0
    pipe.use_adapter(b)
    out["step_adapter_s"] = min(pipe(REQUEST, adapter=a).timings["denoise"] for _ in range(repeats)) / steps

    def switch_pair():
        pipe.use_adapter(b)
        pipe.use_adapter(a)
    out["switch_s"] = best(repeats, switch_pair) / 2
    out["to_none_s"] = best(repeats, lambda: (pipe.use_adapter(None), pipe.use_adapter(a))) / 2
    out["reload_s"] = best(repeats, lambda: HappyHorsePipeline.from_pretrained(folder).use_adapter(b))
    out["adapter_mb"] = a.nbytes / 2**20
    return out


def bench_training(steps: int, workers: tuple[int, ...]) -> dict[int, float]:
    import ray

    from horse_actors.training import AdapterTrainingConfig, train_adapter
    from model.adapter_training import cache_encodings, synthetic_brand_clips

    pipe = HappyHorsePipeline.tiny(seed=0)
    width, height = pipe.size_for("256p", "16:9")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        encodings = cache_encodings(pipe, synthetic_brand_clips(4, width, height), Path(tmp) / "encodings")
        ray.init(num_cpus=max(workers) + 1, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            for n in workers:
                config = AdapterTrainingConfig(rank=4, alpha=4, steps=steps, checkpoint_every=steps)
                result = train_adapter(encodings, tmp, config, num_workers=n, name=f"workers-{n}")
                rates[n] = (steps - 1) / sum(h["seconds"] for h in result.history[1:])
        finally:
            ray.shutdown()
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=12)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")     # Ray listens on 127.0.0.1 only

    with tempfile.TemporaryDirectory() as folder:
        HappyHorsePipeline.tiny(seed=0).save_pretrained(folder)     # the reload baseline needs files
        s = bench_serving(Path(folder), args.repeats, args.rank)
    print(f"tiny preset, distilled 1 s 256p, adapter rank {args.rank} on every block linear ({s['adapter_mb']:.2f} MiB)")
    print(f"  render, no adapter                 {s['render_s'] * 1e3:9.1f} ms")
    print(f"  switch between held adapters       {s['switch_s'] * 1e3:9.3f} ms  = {s['switch_s'] / s['render_s']:.2%} of a render")
    print(f"  switch to no adapter               {s['to_none_s'] * 1e3:9.3f} ms")
    print(f"  first load of an adapter           {s['first_load_s'] * 1e3:9.1f} ms  = {s['first_load_s'] / s['render_s']:.1%} of a render")
    print(f"  reload the pipeline per adapter    {s['reload_s'] * 1e3:9.1f} ms  = {s['reload_s'] / s['switch_s']:,.0f}x the switch")
    print(f"  denoise step, no adapter           {s['step_none_s'] * 1e3:9.2f} ms")
    print(f"  denoise step, unmerged adapter     {s['step_adapter_s'] * 1e3:9.2f} ms  "
          f"(+{s['step_adapter_s'] / s['step_none_s'] - 1:.0%})")
    if not args.skip_train:
        rates = bench_training(args.train_steps, (1, 2))
        print(f"training on Ray Train (CPU workers, {args.train_steps} steps, 1 clip per worker per step)")
        for n, rate in rates.items():
            print(f"  {n} worker(s)                        {rate:9.2f} steps/s  = {rate * n:.2f} clips/s")
        print(f"  2 workers / 1 worker               {rates[2] / rates[1]:9.2f}x steps/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
