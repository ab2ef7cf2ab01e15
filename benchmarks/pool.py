"""What Ray costs and what resident models save, measured with the tiny model.

    .venv/bin/python benchmarks/pool.py --shots 12 --seconds 1.0 --rounds 3

Ways to render the same N shots (render -> encode mp4 -> check -> put blob into a file:// store):
  inproc     a plain loop in this process: one RenderActor (the same class the pool runs, so the
             same render, encode, read-back check and store writes), one shot after the other
  pool-1     RenderPool with one resident actor in the default configuration: Scheduling.overlap
             on, so the actor renders the next shot while the last one is encoded, checked and
             uploaded
  pool-K     the same with one actor per (fake) GPU
  -overlap   the pools with Scheduling(overlap=False): one shot at a time per actor
  per-shot   a fresh Ray worker per shot that loads the model, renders one shot and exits,
             K at a time (what a pool without resident models would do)

How it is compared (this machine is shared, and its load changes from minute to minute):
- start (model load + warm-up, and for a pool its actors' start) is timed apart and printed as
  `start`; it is in no clips/s figure except the resident gain;
- every variant first renders one untimed pass (a process's first clips pay one-time costs:
  imports, codec and store set-up), so the passes compared are steady state on both sides;
- each pool variant is measured in `--rounds` rounds, each an in-process pass and a pool pass of
  the same shots back to back (in turn in-process first, pool first), so both sides of a ratio
  see the same load; the ratio printed is the median over the rounds, with the lowest and highest;
- the store is emptied completely before every pass (blobs and stage results: a store that still
  held the last pass's stage records would send every render through a failed resume first);
- beside each wall time, the CPU seconds of the processes that render (this one; for a pool pass
  also its actors) in that pass: on a loaded machine wall time is inflated, CPU time much less.
  In-process CPU-s per clip / pool CPU-s per clip (>= 1.0: the pool does no more work per clip)
  says what Ray and the overlap cost in work. The Ray cluster's daemons (raylet, GCS, agents) are
  counted apart, per second: they tick with wall time, not per clip, in the in-process passes too;
Printed per variant: clips/s against the in-process loop (>= 1.0x: no slower), the CPU-s per clip
of both, and the accelerator-idle fraction: the share of each actor's wall time (shots only)
outside the model's stages (text encode, denoise, sr, decode, from each outcome's timings), i.e.
the CPU tail (mp4 encode, checks, hashing, upload) and the pool's own overhead. Then overhead =
pool-1 without overlap / inproc (Ray alone), and resident gain = per-shot / pool-K (wall time for
all shots, the pool's start-up included).
Actors get their share of the CPUs (Ray's num_cpus, which Ray passes on as OMP_NUM_THREADS): one
actor all of them, like the in-process loop; K actors 1/K each.
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


def cpu_seconds(workers: tuple[int, ...] = ()) -> tuple[float, float]:
    """User + system CPU seconds of (the processes that render: this one and the actors `workers`,
    every process under this one: the Ray cluster's daemons too). The daemons tick per wall second,
    not per clip, and tick in the in-process passes as well: the first figure is the work itself."""
    import psutil

    work = total = 0.0
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:  # ended meanwhile
            continue
        total += times.user + times.system
        if proc.pid == me.pid or proc.pid in workers:
            work += times.user + times.system
    return work, total


@dataclasses.dataclass(frozen=True)
class Pass:
    """One pass over all shots: wall seconds, the model's busy seconds in it, CPU seconds of the
    rendering processes (`cpu_s`) and of everything under this process (`all_cpu_s`)."""

    wall_s: float
    busy_s: float
    cpu_s: float
    all_cpu_s: float


def one_pass(render_all, clear, workers: tuple[int, ...] = ()) -> Pass:
    """Render every shot once into an emptied store (so every pass really renders and uploads)."""
    clear()
    work, total = cpu_seconds(workers)
    outcomes, seconds = timed(render_all)
    work_after, total_after = cpu_seconds(workers)
    assert all(o.ok for o in outcomes), [o.error_message for o in outcomes if not o.ok]
    return Pass(seconds, sum(o.timings.get(stage, 0.0) for o in outcomes for stage in MODEL_STAGES),
                work_after - work, total_after - total)


def median(values):
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def bench_pool(config, jobs, rounds, clear, inproc_all):
    """Start the pool (timed), one untimed pass, then `rounds` pairs of an in-process pass and a
    pool pass back to back, taking turns at going first."""
    from horse_actors import RenderPool

    with RenderPool(config) as pool:
        stats, start_s = timed(pool.start)
        workers = tuple(s["pid"] for s in stats)
        one_pass(lambda: pool.run(jobs), clear)  # steady state: the actors' first clips are not counted
        pairs = []
        for r in range(rounds):
            sides = [lambda: one_pass(inproc_all, clear), lambda: one_pass(lambda: pool.run(jobs), clear, workers)]
            if r % 2:
                pool_pass, inproc_pass = sides[1](), sides[0]()
            else:
                inproc_pass, pool_pass = sides[0](), sides[1]()
            pairs.append((inproc_pass, pool_pass))
        return {"start_s": start_s, "actors": len(stats), "pairs": pairs}


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
    return shots_s


def report(name: str, r: dict, shots: int) -> dict:
    """Print one pool variant against the in-process passes beside it; return its medians."""
    pairs = r["pairs"]
    rates = [i.wall_s / p.wall_s for i, p in pairs]   # clips/s of the pool / of the loop
    cpu_ratio = [i.cpu_s / p.cpu_s for i, p in pairs]              # CPU-s per clip of the loop / of the pool
    pool_wall, pool_cpu = median(p.wall_s for _, p in pairs), median(p.cpu_s for _, p in pairs)
    loop_wall, loop_cpu = median(i.wall_s for i, _ in pairs), median(i.cpu_s for i, _ in pairs)
    idle = median(1.0 - p.busy_s / (p.wall_s * r["actors"]) for _, p in pairs)
    cluster = median((p.all_cpu_s - p.cpu_s) / p.wall_s for _, p in pairs)
    print(f"{name:>14}: start {r['start_s']:6.2f}s  pass {pool_wall:6.2f}s wall, {pool_cpu:6.2f} CPU-s "
          f"({pool_wall / shots:.2f}s, {pool_cpu / shots:.2f} CPU-s per clip); in-process beside it "
          f"{loop_wall:6.2f}s, {loop_cpu:6.2f} CPU-s ({loop_wall / shots:.2f}s, {loop_cpu / shots:.2f} CPU-s per clip)")
    print(f"{'':>14}  clips/s {median(rates):.2f}x in-process (rounds: {', '.join(f'{x:.2f}' for x in rates)}), "
          f"CPU-s per clip in-process / pool {median(cpu_ratio):.2f} "
          f"(rounds: {', '.join(f'{x:.2f}' for x in cpu_ratio)}), {r['actors']} actor(s), accelerator idle {idle:.0%}; Ray's daemons beside it: {cluster:.2f} CPU-s per second")
    return {"rate": median(rates), "wall_s": pool_wall, "start_s": r["start_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=1.0, help="clip length per shot")
    parser.add_argument("--fake-gpus", type=int, default=2, help="logical GPUs for the local cluster")
    parser.add_argument("--rounds", type=int, default=3,
                        help="in-process + pool pass pairs per pool variant; the median ratio is printed")
    parser.add_argument("--address", default=None, help="join a cluster instead (auto or host:port)")
    parser.add_argument("--no-per-shot", action="store_true", help="skip the per-shot variant (slow: a load per shot)")
    args = parser.parse_args()

    from horse_actors import ModelSpec, PoolConfig, RenderActor, Scheduling, StoreTarget, connect

    info = connect(args.address, num_gpus=None if args.address else args.fake_gpus)
    k = int(info["gpus"])
    store = Path(tempfile.mkdtemp(prefix="horse-bench-"))
    jobs = make_jobs(args.shots, args.seconds)
    config = PoolConfig(ModelSpec("tiny", warmup_seconds=args.seconds), StoreTarget(store.as_uri()))
    cpus = max(1.0, info["cpus"])

    def actors(c, n, overlap=True):
        # Each actor gets its share of the CPUs (Ray sets OMP_NUM_THREADS to an actor's num_cpus):
        # one actor all of them, like the in-process loop, so pool-1 vs inproc measures Ray, not
        # torch's thread count; K actors 1/K each, so they do not oversubscribe the cores.
        return dataclasses.replace(c, scheduling=Scheduling(num_actors=n, cpus_per_actor=max(1.0, cpus // n),
                                                            overlap=overlap))

    print(f"cluster: {info}; {args.shots} shots of {args.seconds}s (tiny model, 256p), "
          f"{args.rounds} rounds of in-process + pool passes per variant")
    try:
        def clear():  # a new run's store: no blobs, no stage results
            for entry in store.iterdir():
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

        actor, load_s = timed(lambda: RenderActor(config.model, config.store, config.encoding))
        inproc_all = lambda: [actor.render(j) for j in jobs]  # noqa: E731
        one_pass(inproc_all, clear)  # steady state, as for the pools
        print(f"{'inproc':>14}: start {load_s:6.2f}s (model load + warm-up)")
        results = {}
        for name, c in [("pool-1", actors(config, 1)), (f"pool-{k}", actors(config, k)),
                        ("pool-1-overlap", actors(config, 1, overlap=False)),
                        (f"pool-{k}-overlap", actors(config, k, overlap=False))]:
            results[name] = report(name, bench_pool(c, jobs, args.rounds, clear, inproc_all), args.shots)
        per_shot = None if args.no_per_shot else bench_per_shot(actors(config, k), jobs, clear)
    finally:
        shutil.rmtree(store, ignore_errors=True)

    print(f"overhead ratio (pool-1 without overlap / in-process, clips/s, shots only): "
          f"{results['pool-1-overlap']['rate']:.2f}x")
    print(f"scaling (pool-{k} / pool-1, clips/s, shots only): {results['pool-1']['wall_s'] / results[f'pool-{k}']['wall_s']:.2f}")
    if per_shot is not None:
        print(f"resident gain (load per shot / resident pool-{k} incl. start): "
              f"{per_shot / (results[f'pool-{k}']['start_s'] + results[f'pool-{k}']['wall_s']):.2f}")


if __name__ == "__main__":
    main()
