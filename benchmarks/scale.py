"""A year of nights on 64 GPUs, simulated on this machine (issue 21): does the catalog keep up
with millions of rows, and does one driver keep 64 actors busy?

    .venv/bin/python benchmarks/scale.py index [--rows 10000000 --commits 3000 --campaigns 300]
    .venv/bin/python benchmarks/scale.py pool  [--jobs 100000 --actors 64 --mean-ms 200]
    .venv/bin/python benchmarks/scale.py failover [--jobs 20000 --actors 64]

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


def plan_seconds(store, shots) -> tuple[float, object]:
    """What the plan task does: expand, keys, one index lookup, then the receipts of the to-do keys."""
    from flows.plan import ModelInfo, make_plan
    from model import describe_tiny

    described = describe_tiny()
    model = ModelInfo(described.fingerprint, "distill", described.size_for)

    def plan():
        p = make_plan(shots, model, store)
        store.receipts.read_ok([job.render_key for job in p.todo])
        return p

    return timed(plan)


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


def compare_layouts(rows: int, commits: int, campaigns: int, say) -> list[dict]:
    """The same rows in the index as an older Horse made it (unpartitioned), that one clustered
    by campaign (z-order), and partitioned by campaign (this Horse): how the layout was chosen."""
    from deltalake import DeltaTable

    from catalog import Store
    from catalog.index import RENDER_SCHEMA
    from catalog.maintenance import maintain

    results = []
    shots = campaign_manifest("new-campaign", 10_000)
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
        table(compare_layouts(args.compare_rows, args.compare_commits, args.compare_campaigns, say), say)

    say(f"(1b) the index grown to {args.rows:,} rows over {args.commits} commits ({args.campaigns} campaigns)")
    root = args.root or tempfile.mkdtemp(prefix="horse-scale-index-")
    shots = campaign_manifest("new-campaign", 10_000)
    rng = np.random.default_rng(2)
    empty = Store(tempfile.mkdtemp(prefix="horse-scale-empty-"))
    plan_empty, empty_plan = plan_seconds(empty, shots)
    store = Store(root)
    grown = grow_index(store, args.rows, args.commits, args.campaigns, args.budget_s, progress=say)
    rate = grown["rows"] / grown["seconds"]
    say(f"  grew {grown['rows']:,} rows in {grown['commits']} commits in {grown['seconds']:.0f}s "
        f"({rate:,.0f} rows/s; {args.rows:,} rows would take {args.rows / rate / 60:.0f} min)")
    before = measure_index(store, args.campaigns, shots, rng, "as committed")
    seconds, report = timed(lambda: maintain(store, retention_hours=0, gc_grace=0, dry_run=False))
    after = {**measure_index(store, args.campaigns, shots, rng, "after maintenance"), "maintain_s": seconds}
    # The rerun of a night: the same 10k variants, now all in the index.
    rerun_rows = [{**job.entry(), "status": "ok", "blob_uri": store.blobs.uri("0" * 64), "sha256": "0" * 64}
                  for job in empty_plan.jobs]
    store.index.commit(rerun_rows)
    after["plan_rerun_s"], plan = plan_seconds(store, shots)
    assert len(plan.cached) == len(rerun_rows)
    table([before, after], say)
    say(f"  plan of a 10k-variant campaign: {plan_empty:.2f}s against an empty index, "
        f"{after['plan_new_s']:.2f}s (new) / {after['plan_rerun_s']:.2f}s (rerun) against {after['rows']:,} rows: "
        f"{after['plan_new_s'] / plan_empty:.2f}x / {after['plan_rerun_s'] / plan_empty:.2f}x")
    index = report.tables[0]
    say(f"  maintenance: {seconds:.1f}s; {index.compacted_files} files compacted into {index.files_after}, "
        f"{index.vacuumed_files} vacuumed; log {index.log_bytes / 1e6:.1f} MB after {index.version_after} versions")


def table(rows: list[dict], say) -> None:
    columns = ["label", "rows", "files", "stored_MB", "log_MB", "grow_s", "maintain_s", "rewritten_MB", "commit_24_s",
               "lookup_present_s", "lookup_absent_s", "lookup_global_s", "plan_new_s", "plan_rerun_s"]
    columns = [c for c in columns if any(c in r for r in rows)]
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
    ap.add_argument("part", choices=["index", "pool", "failover", "all"])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--commits", type=int, default=3000)
    ap.add_argument("--campaigns", type=int, default=300)
    ap.add_argument("--budget-s", type=float, default=1200, help="stop growing the index after this long")
    ap.add_argument("--compare-rows", type=int, default=500_000, help="0: skip the layout comparison")
    ap.add_argument("--compare-commits", type=int, default=150)
    ap.add_argument("--compare-campaigns", type=int, default=15)
    ap.add_argument("--root", default=None, help="store root for the grown index (default: a temp dir)")
    args = ap.parse_args()

    def say(line: str) -> None:
        print(line, flush=True)

    if args.part in ("index", "all"):
        bench_index(args, say)


if __name__ == "__main__":
    main()
