"""A year of nights on 64 GPUs, simulated on this machine (issue 21): does the catalog keep up
with millions of rows, and does one driver keep 64 actors busy?

    .venv/bin/python benchmarks/scale.py driver [--driver-jobs 20000 --driver-chunk 500]
    .venv/bin/python benchmarks/scale.py index [--rows 10000000 --commits 3000 --campaigns 300]
    .venv/bin/python benchmarks/scale.py pool  [--jobs 100000 --actors 64 --mean-ms 200]
    .venv/bin/python benchmarks/scale.py failover [--failover-jobs 20000 --actors 64]
    .venv/bin/python benchmarks/scale.py all --tiny   # every part, small, in a few minutes

driver    the flow's collect path (RenderStream, collect, run ledger, receipts, lineage, index
          commits) fed outcomes by stand-in actors, at --driver-jobs and a tenth of it: driver
          RSS against jobs collected (flat: the driver keeps no outcome) and CPU per job.
index     the render index grown with synthetic rows (the real MERGE commit path, without the
          per-receipt validation) to --rows over --commits commits, stopped early at
          --budget-s and projected; then commit, lookup and plan times, file counts and bytes,
          before and after `catalog.maintenance.maintain`. First the layouts side by side at
          --compare-rows: how the index was chosen.
pool      the real RenderPool feeding --actors actors on a local Ray cluster with that many fake
          GPUs; the actor is the one test double (SleepActor: no model, it sleeps for a duration
          drawn per job). Jobs/s, scheduler overhead per job, idle fraction, driver CPU and RSS.
failover  the same on two `ray start` nodes on loopback (half the GPUs each); the second node
          is killed halfway: every job must end ok exactly once (attempts and renders counted).

Absolute times are this machine's (2 shared cores); the ratios are measured side by side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone

# benchmarks/catalog.py would shadow the `catalog` package when this runs as a script.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_HERE)] + [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def random_hex(n: int, rng: np.random.Generator) -> pa.Array:
    """n random 64-character lowercase hex strings (as render keys and sha256s look)."""
    raw = np.frombuffer(rng.bytes(32 * n), dtype=np.uint8).reshape(n, 32)
    chars = np.empty((n, 64), dtype=np.uint8)
    chars[:, 0::2], chars[:, 1::2] = HEX[raw >> 4], HEX[raw & 15]
    offsets = np.arange(0, 64 * (n + 1), 64, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))


def synthetic_rows(store, n: int, campaign: str, night: int, rng: np.random.Generator) -> pa.Table:
    """n index rows of one campaign's night, shaped like real ones (RENDER_SCHEMA)."""
    from catalog.index import RENDER_SCHEMA

    keys, shas = random_hex(n, rng), random_hex(n, rng)
    blob_dir = store.blobs.uri("0" * 64).rsplit("/blobs/", 1)[0] + "/blobs/sha256/"
    blob_uri = pc.binary_join_element_wise(blob_dir, pc.utf8_slice_codeunits(shas, 0, 2), "/",
                                           pc.utf8_slice_codeunits(shas, 2, 4), "/", shas, ".mp4", "")
    i = np.arange(n)
    const = {
        "render_key": keys, "campaign_id": pa.repeat(campaign, n), "shot_id": pa.array([f"s{j:06d}" for j in i // 8]),
        "variant": pa.array(np.array(["en-16x9-t1", "de-16x9-t1", "ja-16x9-t1", "fr-16x9-t1",
                                      "en-9x16-t1", "de-9x16-t1", "ja-9x16-t1", "fr-9x16-t1"])[i % 8]),
        "language": pa.array(np.array(["en", "de", "ja", "fr"])[i % 4]), "aspect_ratio": pa.repeat("16:9", n),
        "blob_uri": blob_uri, "sha256": shas, "status": pa.repeat("ok", n), "model_fingerprint": pa.repeat("f" * 64, n),
        "timings": pa.repeat('{"decode":5.8,"denoise":1.6,"encode":1.1,"sr":31.0}', n),
        "actor_id": pa.array([f"actor-{j:02d}" for j in i % 64]), "node_id": pa.repeat("node-0", n),
        "run_id": pa.repeat(f"night-{night:05d}", n), "resolution": pa.repeat("1080p", n),
        "rendered_resolution": pa.repeat("1080p", n), "take": pa.array(i % 4 + 1), "seed": pa.array(i),
        "bytes": pa.array(rng.integers(2_000_000, 9_000_000, n)), "attempt": pa.repeat(1, n),
        "width": pa.repeat(1920, n), "height": pa.repeat(1080, n), "frames": pa.repeat(121, n),
        "gpu_seconds": pa.array(rng.normal(38.4, 3.0, n)), "duration_s": pa.repeat(5.0, n),
        "created_at": pa.repeat(pa.scalar(datetime.now(timezone.utc), pa.timestamp("us", tz="UTC")), n),
    }
    return pa.table({f.name: const[f.name].cast(f.type) if f.name in const else pa.nulls(n, f.type)
                     for f in RENDER_SCHEMA}, schema=RENDER_SCHEMA)


def grow_index(store, rows: int, commits: int, campaigns: int, budget_s: float | None = None, seed: int = 0,
               progress=None) -> dict:
    """Commit `rows` synthetic rows in `commits` MERGEs, campaign `commit % campaigns` each time
    (nights interleave campaigns). Stops early when `budget_s` is spent. {rows, commits, seconds}."""
    rng = np.random.default_rng(seed)
    per = max(1, rows // commits)
    started = time.perf_counter()
    done = 0
    for c in range(commits):
        store.index._merge(synthetic_rows(store, per, f"camp-{c % campaigns:05d}", c, rng), f"night-{c}", None)
        done += per
        elapsed = time.perf_counter() - started
        if progress and (c + 1) % max(1, commits // 20) == 0:
            progress(f"  grown to {done:,} rows in {c + 1} commits, {elapsed:.0f}s ({done / elapsed:,.0f} rows/s)")
        if budget_s is not None and elapsed > budget_s and c + 1 < commits:
            progress and progress(f"  time budget of {budget_s:.0f}s spent: stopping at {done:,} rows")
            return {"rows": done, "commits": c + 1, "seconds": elapsed}
    return {"rows": done, "commits": commits, "seconds": time.perf_counter() - started}


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    """(median wall seconds over `repeats`, last result)."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


# ---- (1) the index -----------------------------------------------------------------------------

def campaign_manifest(campaign: str, variants: int) -> list:
    """Validated shots of one campaign with `variants` variants (4 languages x 2 aspect ratios)."""
    from flows.manifest import validate_rows

    languages = ["en", "de", "ja", "fr"]
    records = [{"campaign_id": campaign, "shot_id": f"s{i:06d}", "scene": f"Shot {i}: a glass teapot on a table.",
                "dialogue": [{"speaker": "host", "language": code, "line": f"Line {i}."} for code in languages],
                "languages": languages, "aspect_ratios": ["16:9", "9:16"], "resolution": "540p",
                "duration_s": 5.0, "takes": 1, "seed": i} for i in range(variants // 8)]
    shots, errors = validate_rows(records)
    assert not errors, errors[:3]
    return shots


def plan_seconds(store, shots, repeats: int = 3) -> tuple[float, object]:
    """What the plan task does: expand, keys, one index lookup, then the receipts of the to-do keys."""
    from flows.plan import ModelInfo, make_plan
    from model import describe_tiny

    described = describe_tiny()
    model = ModelInfo(described.fingerprint, "distill", described.size_for)

    def plan():
        p = make_plan(shots, model, store)
        store.receipts.read_ok([job.render_key for job in p.todo])
        return p

    return timed(plan, repeats)  # median of 3 by default: this machine's cores are shared


def plans_side_by_side(empty, store, shots, rounds: int = 5) -> dict:
    """Median wall and CPU seconds of the same plan against an empty store and against `store`,
    taking turns (this machine's cores are shared: load swings between minutes, not within a pair)."""
    walls: dict[str, list[float]] = {"empty": [], "grown": []}
    cpus: dict[str, list[float]] = {"empty": [], "grown": []}
    for r in range(rounds):
        for name in (("empty", "grown") if r % 2 == 0 else ("grown", "empty")):
            target = empty if name == "empty" else store
            cpu = time.process_time()
            wall, _ = plan_seconds(target, shots, repeats=1)
            walls[name].append(wall)
            cpus[name].append(time.process_time() - cpu)
    med = statistics.median
    return {"empty_s": med(walls["empty"]), "grown_s": med(walls["grown"]),
            "empty_cpu_s": med(cpus["empty"]), "grown_cpu_s": med(cpus["grown"])}


def receipts_for(store, n: int, campaign: str, rng) -> list[dict]:
    return [{"render_key": k, "campaign_id": campaign, "shot_id": f"s{i:06d}", "variant": "en-16x9-t1", "status": "ok",
             "blob_uri": store.blobs.uri(s), "sha256": s, "bytes": 4_000_000, "timings": {"sr": 31.0}}
            for i, (k, s) in enumerate(zip(random_hex(n, rng).to_pylist(), random_hex(n, rng).to_pylist()))]


def measure_index(store, campaigns: int, shots, rng, label: str, global_lookup: bool = True) -> dict:
    """Commit, lookup and plan times and the table's size, as a dict of named figures."""
    files, stored = store.index.table.files(), store.index.table.stored()
    present = store.index.to_arrow("camp-00001")["render_key"].to_pylist()[:10_000]
    absent = random_hex(10_000, rng).to_pylist()
    out = {"label": label, "rows": sum(files["num_records"].to_pylist()), "files": files.num_rows,
           "stored_MB": stored["bytes"] / 1e6, "log_MB": stored["log_bytes"] / 1e6}
    out["commit_24_s"], _ = timed(lambda: store.index.commit(receipts_for(store, 24, "camp-00002", rng)), 3)
    out["lookup_present_s"], found = timed(lambda: store.index.existing_keys(present, campaigns=["camp-00001"]), 3)
    assert len(found) == len(present)
    out["lookup_absent_s"], found = timed(lambda: store.index.existing_keys(absent, campaigns=["new-campaign"]), 3)
    assert not found
    if global_lookup:
        out["lookup_global_s"], _ = timed(lambda: store.index.existing_keys(absent))
    out["plan_new_s"], plan = plan_seconds(store, shots)
    assert not plan.cached
    return out


def compare_layouts(rows: int, commits: int, campaigns: int, variants: int, say) -> list[dict]:
    """The same rows in the index as an older Horse made it (unpartitioned), that one clustered
    by campaign (z-order), and partitioned by campaign (this Horse): how the layout was chosen."""
    from deltalake import DeltaTable

    from catalog import Store
    from catalog.index import RENDER_SCHEMA
    from catalog.maintenance import maintain

    results = []
    shots = campaign_manifest("new-campaign", variants)
    for layout in ("unpartitioned", "partitioned"):
        root = tempfile.mkdtemp(prefix=f"horse-scale-{layout}-")
        store = Store(root)
        if layout == "unpartitioned":  # what an older Horse created
            DeltaTable.create(store.index.table.uri, RENDER_SCHEMA)
        grown = grow_index(store, rows, commits, campaigns)
        say(f"  {layout}: grown to {grown['rows']:,} rows in {grown['seconds']:.0f}s")
        rng = np.random.default_rng(1)
        results.append({**measure_index(store, campaigns, shots, rng, f"{layout}, as committed"), "grow_s": grown["seconds"]})
        if layout == "unpartitioned":
            def zorder():
                return store.index.table.write(lambda dt: dt.optimize.z_order(["campaign_id"]))

            seconds, metrics = timed(zorder)
            results.append({**measure_index(store, campaigns, shots, rng, "unpartitioned, z-order(campaign_id)"),
                            "maintain_s": seconds, "rewritten_MB": _rewritten(metrics)})
        seconds, report = timed(lambda: maintain(store, retention_hours=0, gc_grace=0, dry_run=False))
        results.append({**measure_index(store, campaigns, shots, rng, f"{layout}, compacted"), "maintain_s": seconds})
    return results


def _rewritten(metrics: dict) -> float:
    import json

    return json.loads(metrics.get("filesAdded") or "{}").get("totalSize", 0) / 1e6


def bench_index(args, say) -> None:
    from catalog import Store
    from catalog.maintenance import maintain

    if args.compare_rows:
        say(f"(1a) index layouts at {args.compare_rows:,} rows, {args.compare_commits} commits, "
            f"{args.compare_campaigns} campaigns")
        table(compare_layouts(args.compare_rows, args.compare_commits, args.compare_campaigns, args.variants, say), say)

    say(f"(1b) the index grown to {args.rows:,} rows over {args.commits} commits ({args.campaigns} campaigns)")
    root = args.root or tempfile.mkdtemp(prefix="horse-scale-index-")
    shots = campaign_manifest("new-campaign", args.variants)
    rng = np.random.default_rng(2)
    empty = Store(tempfile.mkdtemp(prefix="horse-scale-empty-"))
    _, empty_plan = plan_seconds(empty, shots, repeats=1)
    store = Store(root)
    grown = grow_index(store, args.rows, args.commits, args.campaigns, args.budget_s, progress=say)
    rate = grown["rows"] / grown["seconds"]
    say(f"  grew {grown['rows']:,} rows in {grown['commits']} commits in {grown['seconds']:.0f}s "
        f"({rate:,.0f} rows/s; {args.rows:,} rows would take {args.rows / rate / 60:.0f} min)")
    before = measure_index(store, args.campaigns, shots, rng, "as committed")
    seconds, report = timed(lambda: maintain(store, retention_hours=0, gc_grace=0, dry_run=False))
    after = {**measure_index(store, args.campaigns, shots, rng, "after maintenance"), "maintain_s": seconds}
    new = plans_side_by_side(empty, store, shots)
    # The rerun of a night: the same variants, now all in the index.
    rerun_rows = [{**job.entry(), "status": "ok", "blob_uri": store.blobs.uri("0" * 64), "sha256": "0" * 64}
                  for job in empty_plan.jobs]
    store.index.commit(rerun_rows)
    after["plan_rerun_s"], plan = plan_seconds(store, shots)
    assert len(plan.cached) == len(rerun_rows)
    rerun = plans_side_by_side(empty, store, shots)
    table([before, after], say)
    for label, pair in (("new", new), ("rerun", rerun)):
        say(f"  plan of a {len(empty_plan.jobs):,}-variant campaign ({label}), side by side: "
            f"{pair['empty_s']:.2f}s against an empty index, {pair['grown_s']:.2f}s against {after['rows']:,} rows: "
            f"{pair['grown_s'] / pair['empty_s']:.2f}x wall, {pair['grown_cpu_s'] / pair['empty_cpu_s']:.2f}x CPU "
            f"({pair['empty_cpu_s']:.2f} / {pair['grown_cpu_s']:.2f} CPU-s)")
    index = report.tables[0]
    say(f"  maintenance: {seconds:.1f}s; {index.compacted_files} files compacted into {index.files_after}, "
        f"{index.vacuumed_files} vacuumed; log {index.log_bytes / 1e6:.1f} MB after {index.version_after} versions")


# ---- (2) and (3): the pool ---------------------------------------------------------------------

# Published H100 seconds per 5 s clip (research): base denoise, 1080p super-resolution, decode.
H100_STAGE_S = {"base": 1.6, "sr_1080p": 31.0, "decode": 5.8}


def sleep_actor_class():
    """The one test double (no GPU here): a RenderActor that loads no model and whose render
    sleeps for the job's drawn duration, appending one line per finished render to a file in
    the "store" directory (so renders can be counted, even those of actors killed later)."""
    import collections
    import threading

    from horse_actors import RenderActor, RenderOutcome
    from horse_actors.actor import _ray_context

    class SleepActor(RenderActor):
        def __init__(self, model, store, encoding):
            self.model, self.encoding, self.renders, self.ids = model, encoding, 0, _ray_context()
            # RenderActor.render's call bookkeeping (outcomes of recent calls, calls under way)
            self._recent, self._calls, self._running = collections.OrderedDict(), threading.Condition(), set()
            self._log = open(os.path.join(store.url.removeprefix("file://"), f"renders-{os.getpid()}.log"), "a")

        def stats(self):
            return {**self.ids, "pid": os.getpid(), "device": "fake-gpu", "load_s": 0.0, "renders": self.renders}

        def _render(self, job, attempt, submitted_at):
            started = time.time()
            time.sleep(float(job.metadata["sleep_s"]))
            self.renders += 1
            self._log.write(f"{job.render_key} {attempt}\n")
            self._log.flush()
            return RenderOutcome(render_key=job.render_key, status="ok", attempt=attempt, pid=os.getpid(),
                                 duration_s=time.time() - started, **self.ids,
                                 timings={"queue": round(started - (submitted_at or started), 4)})

    return SleepActor


def sleep_jobs(n: int, mean_s: float, seed: int = 0) -> tuple[list, float]:
    """n jobs with durations drawn around `mean_s` (lognormal, as shot lengths vary); total sleep."""
    from horse_actors import RenderJob

    durations = np.random.default_rng(seed).lognormal(np.log(mean_s) - 0.045, 0.3, n)
    jobs = [RenderJob(f"job-{i:07d}", None, "sim", f"s{i:07d}", "en-16x9-t1", {"sleep_s": f"{d:.4f}"})
            for i, d in enumerate(durations)]
    return jobs, float(durations.sum())


class DriverSampler:
    """The driver's RSS, sampled every 0.2 s on a thread while a run lasts."""

    def __init__(self):
        import threading

        import psutil

        self.proc, self.samples, self.stop = psutil.Process(), [], threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self.stop.wait(0.2):
            self.samples.append(self.proc.memory_info().rss)

    def __enter__(self):
        self.rss_start = self.proc.memory_info().rss
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.rss_end = self.proc.memory_info().rss
        self.peak = max([self.rss_end, *self.samples])


class Tally:
    """What the driver learns from each final outcome, kept as counts (as a flow files receipts)."""

    def __init__(self, n: int, then=None):
        import psutil

        self.done = self.ok = self.attempts = self.retried = 0
        self.then, self.proc, self.every, self.rss = then, psutil.Process(), max(1, n // 16), []

    def __call__(self, outcome) -> None:
        self.done += 1
        if self.done % self.every == 0:
            self.rss.append((self.done, self.proc.memory_info().rss))
        self.ok += outcome.ok
        self.attempts += outcome.attempt
        self.retried += outcome.attempt > 1
        if self.then is not None:
            self.then(self)


def rss_slope(samples: list[tuple[int, int]], n: int) -> float | None:
    """Least-squares slope of RSS bytes against jobs finished, from the second quarter on."""
    late = [(x, y) for x, y in samples if x >= n // 4]
    if len(late) < 3:
        return None
    return float(np.polyfit([x for x, _ in late], [y for _, y in late], 1)[0])


def run_pool(address: str | None, actors: int, jobs: list, total_sleep: float, say, mode: str = "stream",
             then=None) -> dict:
    """Start a RenderPool of SleepActors (one per fake GPU) and give it every job: `stream` (the
    flow's way: outcomes handed on, none kept) or `run` (every outcome kept and returned)."""
    from horse_actors import ModelSpec, PoolConfig, RenderPool, Scheduling, StoreTarget

    logs = tempfile.mkdtemp(prefix="horse-scale-renders-")
    config = PoolConfig(ModelSpec("none", warmup_seconds=0), StoreTarget("file://" + logs),
                        # overlap off: the stand-in's sleep is the model's time, which a real actor
                        # spends one job at a time (overlap would let two sleeps run at once)
                        scheduling=Scheduling(ray_address=address, num_actors=actors, cpus_per_actor=0, overlap=False,
                                              max_retries=3, actor_start_timeout_s=900, job_deadline_s=600))
    with RenderPool(config, actor_class=sleep_actor_class()) as pool:
        started, ready = time.perf_counter(), pool.start()
        start_s = time.perf_counter() - started
        say(f"  {len(ready)} actors ready in {start_s:.0f}s on {len({a['node_id'] for a in ready})} node(s)")
        cpu, wall = time.process_time(), time.perf_counter()
        tally = Tally(len(jobs), then)
        with DriverSampler() as rss:
            kept = pool.run(jobs, on_outcome=tally) if mode == "run" else pool.stream(iter(jobs), on_outcome=tally)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        del kept
    renders: dict[str, int] = {}
    for name in os.listdir(logs):
        with open(os.path.join(logs, name)) as f:
            for line in f:
                key = line.split()[0]
                renders[key] = renders.get(key, 0) + 1
    n = len(jobs)
    return {
        "jobs": n, "actors": actors, "start_s": start_s, "wall_s": wall, "jobs_per_s": n / wall,
        "driver_cpu_s": cpu, "overhead_ms_per_job": 1000 * cpu / n,
        "idle_fraction": 1 - total_sleep / (actors * wall),
        "rss_start_MB": rss.rss_start / 1e6, "rss_peak_MB": rss.peak / 1e6, "rss_end_MB": rss.rss_end / 1e6,
        # bytes per job = KB per 1,000 jobs: over the whole run, and the slope of RSS against jobs
        # finished after the first quarter (past the allocations any run makes once)
        "rss_per_1k_jobs_KB": (rss.peak - rss.rss_start) / n, "rss_slope_KB_per_1k": rss_slope(tally.rss, n),
        "outcomes": tally.done, "ok": tally.ok, "attempts": tally.attempts, "retried": tally.retried,
        "renders": sum(renders.values()), "distinct_rendered": len(renders),
        "rendered_twice": sum(c > 1 for c in renders.values()),
        # every job one final ok outcome, every job rendered (a clip stored by an actor killed
        # before it answered is rendered again: at-least-once rendering, see horse_actors/pool.py)
        "exactly_once": "yes" if tally.done == tally.ok == len(renders) == n else "NO",
        "replacements": pool.replacements,
    }


def bench_pool(args, say) -> list[dict]:
    """The same jobs twice on one cluster: kept (`run`) and streamed (`stream`, as the flow does)."""
    from horse_actors import connect

    say(f"(2) RenderPool: {args.jobs:,} jobs on {args.actors} SleepActors (fake GPUs), mean {args.mean_ms:.0f} ms; "
        f"outcomes kept (run) and streamed (stream)")
    jobs, total_sleep = sleep_jobs(args.jobs, args.mean_ms / 1000)
    connect(None, num_cpus=2, num_gpus=args.actors, object_store_memory=512 * 1024**2)
    import ray

    try:
        return [{"run": f"one node, {mode}", **run_pool(None, args.actors, jobs, total_sleep, say, mode)}
                for mode in args.pool_modes.split(",")]
    finally:
        ray.shutdown()


def bench_failover(args, say) -> dict:
    """Two `ray start` nodes on loopback, half the fake GPUs each; the second dies halfway."""
    import subprocess

    import ray

    from tests.conftest import free_port
    from tests.infra._procs import kill_processes
    from tests.infra.test_multinode import JOIN_ON_LOOPBACK, RAY, _ray_env

    say(f"(3) the same, {args.failover_jobs:,} jobs on two nodes of {args.actors // 2} GPUs; the second node killed halfway")
    jobs, total_sleep = sleep_jobs(args.failover_jobs, args.mean_ms / 1000, seed=1)
    port, head, worker = free_port(), tempfile.mkdtemp(prefix="hsh-", dir="/tmp"), tempfile.mkdtemp(prefix="hsw-", dir="/tmp")
    env = {**_ray_env(), "PYTHONPATH": os.path.dirname(_HERE)}
    common = ["--num-cpus=2", f"--num-gpus={args.actors // 2}", "--object-store-memory=300000000", "--disable-usage-stats"]
    killed = {"at": None, "time": None}

    def kill_halfway(tally: Tally) -> None:
        if killed["at"] is None and tally.done >= len(jobs) // 2:
            killed["at"], killed["time"] = tally.done, time.perf_counter()
            killed["processes"] = kill_processes([worker])

    try:
        subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=false",
                        f"--ray-client-server-port={free_port()}", f"--temp-dir={head}", *common],
                       env={**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}, check=True, capture_output=True, timeout=300)
        subprocess.run([sys.executable, "-c", JOIN_ON_LOOPBACK, "start", f"--address=127.0.0.1:{port}",
                        "--node-ip-address=127.0.0.1", f"--temp-dir={worker}", *common],
                       env={**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}, check=True, capture_output=True, timeout=300)
        result = run_pool(f"127.0.0.1:{port}", args.actors, jobs, total_sleep, say, "stream", kill_halfway)
        result["killed_after"] = killed["at"]
        return result
    finally:
        ray.shutdown()
        kill_processes([head, worker, f"127.0.0.1:{port}"])


def run_driver(n: int, chunk: int, window: int) -> dict:
    """The flow's collect path for n jobs (RenderStream, collect, run ledger, receipts, lineage
    events, one index commit per chunk, into a local store), fed by stand-in actors that answer
    at once, at most `window` outcomes ahead of the collector (as `window` actors would). The plan
    is built before measuring (it is the run's input); RSS is sampled against jobs collected."""
    import logging
    import threading
    import uuid
    from types import SimpleNamespace

    import psutil

    from catalog import Store
    from flows.budget import BudgetGuard
    from flows.collect import RunRecord, collect
    from flows.plan import PlannedJob
    from flows.progress import Progress, RunTotals
    from flows.publish import version_entries
    from flows.render_stream import RenderStream
    from flows.run_ledger import RunLedger
    from horse_actors import RenderJob, RenderOutcome

    store = Store("file://" + tempfile.mkdtemp(prefix="horse-scale-driver-"))
    clip = store.put_blob(b"stand-in clip", ext="mp4")  # deterministic renders share a hash
    todo = [PlannedJob("sim", f"s{i:07d}", "en-16x9-t1", "en", "16:9", 1, 7, "1080p", 5.0, 1920, 1080,
                       "a prompt of ordinary length for a shot of a campaign", f"{i + 1:064x}") for i in range(n)]
    run = RunRecord(str(uuid.uuid4()), "render_campaign", "tiny", ({"uri": "manifest", "version": "1"},), ("sim",))
    proc, samples = psutil.Process(), []
    ledger = RunLedger()

    class StandInActors:
        def stream(self, jobs, on_outcome, cancel_event: threading.Event, admit=None) -> int:
            for sent, job in enumerate(jobs, start=1):
                on_outcome(RenderOutcome(job.render_key, "ok", blob_uri=clip.uri, sha256=clip.sha256, bytes=clip.bytes,
                                         attempt=1, duration_s=0.2, actor_id="a" * 32, node_id="n" * 56,
                                         timings={"queue": 0.01, "denoise": 0.1, "encode": 0.05, "upload": 0.01}))
                while ledger.count < sent - window and not cancel_event.is_set():
                    time.sleep(0.0005)
                if sent % max(1, n // 16) == 0:
                    samples.append((sent, proc.memory_info().rss))
            return n

    def commit(receipts: list[dict], number: int) -> None:  # the flow's index-chunk task, without Prefect
        store.index.commit(receipts, run_id=run.run_id)

    to_job = lambda job: RenderJob(job.render_key, None, job.campaign_id, job.shot_id, job.variant)  # noqa: E731
    totals = RunTotals(planned=n)
    cpu, wall = time.process_time(), time.perf_counter()
    with DriverSampler() as rss, ledger:
        with RenderStream(StandInActors(), todo, to_job) as stream:
            collect(stream.outcomes(), chunk, store, run, totals, Progress(None, "scale"),
                    BudgetGuard([], SimpleNamespace(job_seconds={}), []), ledger, commit, logging.getLogger("scale"))
        loop_peak = max(s for _, s in samples)
        entries = version_entries(SimpleNamespace(jobs=todo, cached={}, kept=[]), ledger.fields)["sim"]
        outputs = list(ledger.outputs())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert totals.rendered == n == len(entries) == len(outputs), (totals.rendered, len(entries))
    return {"jobs": n, "chunk": chunk, "wall_s": wall, "cpu_s": cpu, "cpu_ms_per_job": 1000 * cpu / n,
            "rss_start_MB": rss.rss_start / 1e6, "loop_peak_MB": loop_peak / 1e6,
            "loop_growth_MB": (loop_peak - rss.rss_start) / 1e6, "rss_slope_KB_per_1k": rss_slope(samples, n),
            "publish_peak_MB": rss.peak / 1e6}


def bench_driver(args, say) -> list[dict]:
    """The flow's render loop at two sizes: its RSS must not grow with the number of jobs."""
    sizes = (args.driver_jobs // 10, args.driver_jobs)
    say(f"(0) the flow's collect path: {sizes[0]:,} and {sizes[1]:,} jobs, chunks of {args.driver_chunk}, "
        f"stand-in actors answering at once ({args.actors} outcomes ahead at most)")
    run_driver(max(100, sizes[0] // 4), args.driver_chunk, args.actors)  # warm-up: imports, first commits, caches
    rows = [{"run": f"{n:,} jobs", **run_driver(n, args.driver_chunk, args.actors)} for n in sizes]
    for key in rows[0]:
        if key != "run":
            say("  " + f"{key:>20s}" + "".join(f"{_fmt(r.get(key)):>16s}" for r in rows))
    return rows


def projection(pool: dict, say) -> None:
    """A 64-GPU night at the published H100 stage times, against the measured driver figures."""
    clip_gpu_s = sum(H100_STAGE_S.values())
    per_s = 64 / clip_gpu_s
    night = per_s * 10 * 3600
    say(f"  a 64-GPU night at H100 stage times ({' + '.join(f'{v:g}' for v in H100_STAGE_S.values())} = "
        f"{clip_gpu_s:.1f} GPU-s per 5 s 1080p clip): {per_s:.2f} clips/s, {night:,.0f} clips in 10 hours")
    say(f"  driver: {pool['jobs_per_s']:.0f} jobs/s measured here ({pool['jobs_per_s'] / per_s:,.0f}x what 64 H100s need), "
        f"{pool['overhead_ms_per_job']:.2f} ms CPU per job ({per_s * pool['overhead_ms_per_job'] / 10:.2f}% of one core); "
        f"RSS {pool['rss_slope_KB_per_1k'] or 0:+.1f} KB per 1k jobs -> "
        f"{night * (pool['rss_slope_KB_per_1k'] or 0) / 1e6:+.1f} MB over the night's {night:,.0f} jobs")


# `--tiny`: the same code paths at sizes that run in a few minutes (figures then say less).
TINY = {"rows": 100_000, "commits": 100, "campaigns": 10, "budget_s": 120, "compare_rows": 30_000,
        "compare_commits": 30, "compare_campaigns": 5, "variants": 2_000, "jobs": 2_000, "failover_jobs": 1_000, "actors": 8,
        "driver_jobs": 2_000, "driver_chunk": 100,
        "mean_ms": 20.0}


def table(rows: list[dict], say) -> None:
    columns = ["label", "rows", "files", "stored_MB", "log_MB", "grow_s", "maintain_s", "rewritten_MB", "commit_24_s",
               "lookup_present_s", "lookup_absent_s", "lookup_global_s", "plan_new_s", "plan_rerun_s"]
    columns = [c for c in columns if any(c in r for r in rows)] or list(rows[0])
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    say("  " + "  ".join(c.rjust(widths[c]) if c != "label" else c.ljust(widths[c]) for c in columns))
    for r in rows:
        say("  " + "  ".join(_fmt(r.get(c)).rjust(widths[c]) if c != "label" else _fmt(r.get(c)).ljust(widths[c])
                             for c in columns))


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=["driver", "index", "pool", "failover", "all"])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--commits", type=int, default=3000)
    ap.add_argument("--campaigns", type=int, default=300)
    ap.add_argument("--budget-s", type=float, default=1200, help="stop growing the index after this long")
    ap.add_argument("--compare-rows", type=int, default=500_000, help="0: skip the layout comparison")
    ap.add_argument("--compare-commits", type=int, default=150)
    ap.add_argument("--compare-campaigns", type=int, default=15)
    ap.add_argument("--variants", type=int, default=10_000, help="variants of the campaign planned against the index")
    ap.add_argument("--root", default=None, help="store root for the grown index (default: a temp dir)")
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--failover-jobs", type=int, default=20_000)
    ap.add_argument("--actors", type=int, default=64)
    ap.add_argument("--pool-modes", default="stream,run", help="stream (the flows' way), run (outcomes kept), or both")
    ap.add_argument("--mean-ms", type=float, default=200.0, help="mean stand-in render time")
    ap.add_argument("--driver-jobs", type=int, default=20_000, help="the driver part runs this many and a tenth")
    ap.add_argument("--driver-chunk", type=int, default=500, help="outcomes per index commit in the driver part")
    ap.add_argument("--tiny", action="store_true", help="every part at a size this 2-core machine runs in minutes")
    if ap.parse_known_args()[0].tiny:  # --tiny changes the defaults; a size given explicitly still wins
        ap.set_defaults(**TINY)
    args = ap.parse_args()

    def say(line: str) -> None:
        print(line, flush=True)

    if args.part in ("driver", "all"):
        bench_driver(args, say)
    if args.part in ("index", "all"):
        bench_index(args, say)
    runs = []
    if args.part in ("pool", "all"):
        runs += bench_pool(args, say)
    if args.part in ("failover", "all"):
        runs.append({"run": "node killed, stream", **bench_failover(args, say)})
    if runs:
        width = max(16, *(len(r["run"]) + 2 for r in runs))
        say("  " + f"{'':>20s}" + "".join(f"{r['run']:>{width}s}" for r in runs))
        for key in runs[0]:
            if key != "run":
                say("  " + f"{key:>20s}" + "".join(f"{_fmt(r.get(key)):>{width}s}" for r in runs))
        projection(runs[0], say)


if __name__ == "__main__":
    main()
