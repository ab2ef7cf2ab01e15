"""What Ray costs and what resident models save, measured with the tiny model.

    .venv/bin/python benchmarks/pool.py --shots 12 --seconds 1.0

Ways to render the same N shots (render -> encode mp4 -> put blob into a file:// store):
  inproc     a plain loop in this process: load the model once, then render each shot
  pool-1     RenderPool with one resident actor (same work as `inproc`, plus Ray), in the default
             configuration: Scheduling.overlap on, so the actor renders the next shot while the
             last one is encoded, checked and uploaded
  pool-K     the same with one actor per (fake) GPU
  -overlap   the pools with Scheduling(overlap=False): one shot at a time per actor
  per-shot   a fresh Ray worker per shot that loads the model, renders one shot and exits,
             K at a time (what a pool without resident models would do)
Printed: overhead = pool-1 / inproc (shot time, model load excluded), and
resident gain = per-shot / pool-K (wall time for all shots, the pool's start-up included); then
clips per second of each resident variant against the in-process loop (>= 1.0x: no slower), and
the accelerator-idle fraction: the share of each actor's wall time (shots only) outside the model's
stages (text encode, denoise, sr, decode, from each outcome's timings), i.e. the CPU tail (mp4
encode, checks, hashing, upload) and the pool's own overhead. Beside each wall time, the CPU
seconds of this process and every process under it (the Ray cluster and its workers) in that
pass: on a loaded machine wall time is inflated, CPU time much less.
On a CPU-only machine the "GPUs" are logical (Ray resources); every actor runs torch on the CPU,
so K actors share the cores and pool-K shows the scheduling, not GPU scaling.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def make_jobs(n: int, seconds: float):
    from catalog import render_key
    from horse_actors import RenderJob
    from model import RenderRequest

    jobs = []
    for i in range(n):
        request = RenderRequest(prompt=f"benchmark shot {i}: a horse on a beach", seconds=seconds, seed=i)
        key = render_key({"benchmark": "pool", "shot": i, "seconds": seconds})
        jobs.append(RenderJob(key, request, "bench", f"s{i:03d}", "en-16x9-t1"))
    return jobs


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


from horse_actors.jobs import MODEL_STAGES  # noqa: E402 - the pipeline's stages: where the accelerator is busy


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and every live process under it (Ray's workers)."""
    import psutil

    total = 0.0
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:  # ended meanwhile
            continue
    return total


def best_of(repeats: int, render_all, clear) -> tuple[float, float, float]:
    """Fastest of `repeats` passes over all shots (this machine is shared and noisy): its wall
    seconds, the model's busy seconds in it and the CPU seconds it took; the store is emptied
    before each pass so every pass really uploads."""
    passes = []
    for _ in range(repeats):
        clear()
        cpu = cpu_seconds()
        outcomes, seconds = timed(render_all)
        cpu = cpu_seconds() - cpu
        assert all(o.ok for o in outcomes), [o.error_message for o in outcomes if not o.ok]
        passes.append((seconds, sum(o.timings.get(stage, 0.0) for o in outcomes for stage in MODEL_STAGES), cpu))
    return min(passes)


def bench_inproc(config, jobs, repeats, clear):
    from horse_actors import RenderActor

    actor, load_s = timed(lambda: RenderActor(config.model, config.store, config.encoding))
    shots_s, busy_s, cpu_s = best_of(repeats, lambda: [actor.render(j) for j in jobs], clear)
    return {"start_s": load_s, "shots_s": shots_s, "busy_s": busy_s, "cpu_s": cpu_s, "actors": 1}


def bench_pool(config, jobs, repeats, clear):
    from horse_actors import RenderPool

    with RenderPool(config) as pool:
        stats, start_s = timed(pool.start)
        shots_s, busy_s, cpu_s = best_of(repeats, lambda: pool.run(jobs), clear)
        return {"start_s": start_s, "shots_s": shots_s, "busy_s": busy_s, "cpu_s": cpu_s, "actors": len(stats)}


def bench_per_shot(config, jobs, clear):
    import ray

    from horse_actors import RenderActor

    sched = config.scheduling

    @ray.remote(num_gpus=0 if sched.cpu_mode else sched.gpus_per_actor, num_cpus=sched.cpus_per_actor,
                max_calls=1)  # a fresh worker process per shot: import, load, render, exit
    def render_once(model, store, encoding, job):
        return RenderActor(model, store, encoding).render(job)

    model = dataclasses.replace(config.model, warmup_seconds=0)  # a one-shot worker has nothing to warm up for
    clear()
    t0 = time.perf_counter()
    outcomes = ray.get([render_once.remote(model, config.store, config.encoding, job) for job in jobs])
    shots_s = time.perf_counter() - t0
    assert all(o.ok for o in outcomes), [o.error_message for o in outcomes if not o.ok]
    return {"start_s": 0.0, "shots_s": shots_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=1.0, help="clip length per shot")
    parser.add_argument("--fake-gpus", type=int, default=2, help="logical GPUs for the local cluster")
    parser.add_argument("--repeats", type=int, default=2, help="passes per resident variant; the fastest counts")
    parser.add_argument("--address", default=None, help="join a cluster instead (auto or host:port)")
    parser.add_argument("--no-per-shot", action="store_true", help="skip the per-shot variant (slow: a load per shot)")
    args = parser.parse_args()

    from horse_actors import ModelSpec, PoolConfig, Scheduling, StoreTarget, connect

    info = connect(args.address, num_gpus=None if args.address else args.fake_gpus)
    k = int(info["gpus"])
    store = tempfile.mkdtemp(prefix="horse-bench-")
    jobs = make_jobs(args.shots, args.seconds)
    config = PoolConfig(ModelSpec("tiny", warmup_seconds=args.seconds), StoreTarget(Path(store).as_uri()))
    # Ray sets OMP_NUM_THREADS to an actor's num_cpus; give the single actor the CPUs the
    # in-process loop has, so pool-1 vs inproc measures Ray, not torch's thread count.
    one_actor = dataclasses.replace(config, scheduling=Scheduling(num_actors=1, cpus_per_actor=max(1.0, info["cpus"])))
    print(f"cluster: {info}; {args.shots} shots of {args.seconds}s (tiny model, 256p)")
    try:
        def clear():
            shutil.rmtree(Path(store) / "blobs", ignore_errors=True)

        n = args.repeats
        results = {}

        def serial(c):
            return dataclasses.replace(c, scheduling=dataclasses.replace(c.scheduling, overlap=False))

        variants = [("inproc", lambda: bench_inproc(config, jobs, n, clear)),
                    ("pool-1", lambda: bench_pool(one_actor, jobs, n, clear)),
                    (f"pool-{k}", lambda: bench_pool(config, jobs, n, clear)),
                    ("pool-1-overlap", lambda: bench_pool(serial(one_actor), jobs, n, clear)),
                    (f"pool-{k}-overlap", lambda: bench_pool(serial(config), jobs, n, clear))]
        if not args.no_per_shot:
            variants.append(("per-shot", lambda: bench_per_shot(config, jobs, clear)))
        for name, run in variants:
            results[name] = run()
            r = results[name]
            cpu = f"  CPU {r['cpu_s']:6.2f}s" if "cpu_s" in r else ""
            print(f"{name:>14}: start {r['start_s']:6.2f}s  shots {r['shots_s']:6.2f}s  "
                  f"({r['shots_s'] / args.shots:.2f}s/shot){cpu}")
    finally:
        shutil.rmtree(store, ignore_errors=True)

    overhead = results["pool-1"]["shots_s"] / results["inproc"]["shots_s"]
    print(f"overhead ratio (pool-1 / in-process, shots only): {overhead:.2f}")
    print(f"scaling (pool-1 / pool-{k}, shots only): {results['pool-1']['shots_s'] / results[f'pool-{k}']['shots_s']:.2f}")
    if "per-shot" in results:
        resident = results[f"pool-{k}"]["start_s"] + results[f"pool-{k}"]["shots_s"]
        print(f"resident gain (load per shot / resident pool-{k} incl. start): "
              f"{results['per-shot']['shots_s'] / resident:.2f}")
    inproc = args.shots / results["inproc"]["shots_s"]
    for name, r in results.items():
        if "busy_s" not in r:
            continue
        rate = args.shots / r["shots_s"]
        idle = 1.0 - r["busy_s"] / (r["shots_s"] * r["actors"])
        print(f"{name:>14}: {rate:.3f} clips/s = {rate / inproc:.2f}x in-process, "
              f"{r['actors']} actor(s), accelerator idle {idle:.0%}, "
              f"{r['cpu_s'] / args.shots:.2f} CPU-s/clip ({args.shots / r['cpu_s']:.3f} clips per CPU-second)")


if __name__ == "__main__":
    main()
