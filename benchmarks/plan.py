"""Planning a night at studio scale: `horse plan`'s work on 100k manifest rows (400k variants) —
read and validate the manifest, expand variants, render keys, one index lookup, the quote per
stage learned from history — next to a plain pyarrow read of the same manifest (the floor), plus
the whole `horse plan` command on a 3-row manifest (wall and CPU). Each measurement runs in a fresh process, so
its peak memory (ru_maxrss) is its own; time is wall and CPU (the CPU figure is what a loaded
machine does not inflate as much).

    .venv/bin/python benchmarks/plan.py [--rows 100000] [--cached-fraction 0.5] [--history 2000]

A fraction of the variants is already in the index, as on a night after a backfill, and the
index holds `--history` earlier renders of this model with per-stage device times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# benchmarks/catalog.py would shadow the `catalog` package when this runs as a script.
sys.path[:] = [ROOT] + sys.path[1:]

LANGUAGES = ["en", "de"]
ASPECTS = ["16:9", "9:16"]


def rows(n: int) -> list[dict]:
    return [{
        "campaign_id": f"campaign-{i // 1000:03d}", "shot_id": f"s{i:06d}",
        "scene": f"Shot {i}: a woman in a cream sweater lifts a glass teapot and smiles at the camera.",
        "dialogue": [{"speaker": "woman", "language": code, "line": f"Line {i} in {code}."} for code in LANGUAGES],
        "languages": LANGUAGES, "aspect_ratios": ASPECTS, "resolution": "540p", "duration_s": 5.0, "takes": 1,
        "seed": i, "priority": i % 3, "tags": ["hero"] if i % 10 == 0 else [],
    } for i in range(n)]


# ---- measured, each in its own process -----------------------------------------------------------


def measure(what: str, manifest: str, store: str) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    if what == "read":
        import pyarrow.parquet as pq

        result = {"rows": pq.read_table(manifest).num_rows}
    else:
        from flows.dry_run import dry_run
        from flows.settings import load_settings

        document = dry_run(manifest, load_settings(store_url=store), rows=None if what == "plan-json" else 40)
        if what == "plan-json":
            from flows.cli.command import write_json

            with open(os.devnull, "w") as out:
                write_json(document, out)
        result = {"jobs": document["jobs"], "cached": document["cached"], "quote": document["quote"]["gpu_seconds"],
                  "basis": document["quote_basis"], "torch": "torch" in sys.modules}
    return {**result, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "peak_mb": peak_mb()}


def peak_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM starts afresh at exec; ru_maxrss would
    carry the peak of the parent that forked it."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_fresh_process(what: str, manifest: str, store: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", what, manifest, store], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT}, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def calibration() -> float:
    cpu, total = time.process_time(), 0
    for i in range(10_000_000):
        total += i
    return time.process_time() - cpu


def whole_command(manifest: str, store: str) -> tuple[float, float]:
    """(wall s, CPU s) of `horse plan` on `manifest` as a subprocess: its user + system time."""
    before, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run([sys.executable, "-m", "flows.cli", "plan", manifest, "--store", store], capture_output=True,
                   env={**os.environ, "PYTHONPATH": ROOT}, check=True)
    wall, after = time.perf_counter() - wall, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


# ---- setup ----------------------------------------------------------------------------------------


def seed_store(store_url: str, manifest: str, cached_fraction: float, history: int) -> None:
    """Index rows for a fraction of the manifest's variants, and earlier renders with stage times."""
    from catalog import Store
    from flows.manifest import read_manifest
    from flows.plan import make_plan, model_info
    from flows.settings import load_settings

    settings = load_settings(store_url=store_url)
    store = Store(store_url)
    model = model_info(settings)
    jobs = make_plan(read_manifest(manifest).shots, model, store).jobs
    blob = {"status": "ok", "blob_uri": store.blobs.uri("0" * 64), "sha256": "0" * 64}
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    store.index.commit(
        [{**job.entry(), **blob, "model_fingerprint": model.fingerprint} for job in jobs[: int(len(jobs) * cached_fraction)]]
        + [{**job.entry(), **blob, "model_fingerprint": model.fingerprint, "profile": model.profile, "device_type": "cpu",
            "resolution": "540p", "duration_s": 5.0, "created_at": start + timedelta(seconds=i),
            "device_seconds": {"base": 1.5 + i % 7 / 10, "sr_540p": 5.0 + i % 5 / 10, "decode": 1.3, "encode": 1.0}}
           for i, job in enumerate(jobs[-history:])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--cached-fraction", type=float, default=0.5)
    parser.add_argument("--history", type=int, default=2000)
    parser.add_argument("--measure", nargs=3, metavar=("WHAT", "MANIFEST", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return

    from flows.manifest import write_manifest

    work = tempfile.mkdtemp(prefix="horse-bench-plan-")
    try:
        manifest, small = os.path.join(work, "night.parquet"), os.path.join(work, "small.parquet")
        write_manifest(rows(args.rows), manifest)
        write_manifest(rows(3), small)
        store = os.path.join(work, "store")
        t0 = time.perf_counter()
        seed_store(store, manifest, args.cached_fraction, args.history)
        print(f"setup: {args.rows} manifest rows, index seeded in {time.perf_counter() - t0:.1f} s; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; a 10M-step Python loop takes "
              f"{calibration():.2f} s CPU here (a busy machine inflates every figure below)")
        read = in_fresh_process("read", manifest, store)
        plan = in_fresh_process("plan", manifest, store)
        full = in_fresh_process("plan-json", manifest, store)
        small = [whole_command(small, store) for _ in range(3)]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{args.rows} manifest rows -> {plan['jobs']} variants, {plan['cached']} already rendered; "
          f"quote {plan['quote'] / 3600:.1f} GPU-hours ({plan['basis'][:80]}...); torch loaded: {plan['torch']}")
    print(f"{'':38}{'wall s':>9}{'CPU s':>9}{'peak MB':>9}")
    for name, m in (("pyarrow read of the manifest (floor)", read), ("plan + quote (horse plan's work)", plan),
                    ("plan + quote + the --json document", full)):
        print(f"{name:38}{m['wall_s']:9.2f}{m['cpu_s']:9.2f}{m['peak_mb']:9.0f}")
    print(f"ratio plan / pyarrow read: {plan['wall_s'] / read['wall_s']:.0f}x wall time, "
          f"{plan['cpu_s'] / read['cpu_s']:.0f}x CPU time, {plan['peak_mb'] / read['peak_mb']:.1f}x peak memory")
    wall, cpu = min(small)
    print(f"horse plan on 3 rows, the whole command as a subprocess (best of 3): {wall:.2f} s wall, {cpu:.2f} s CPU")


if __name__ == "__main__":
    main()
