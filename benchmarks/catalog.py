"""Catalog index at campaign scale: commit N receipts and look up N keys, next to pyarrow
writing and reading the same rows as one plain Parquet file (the ratio is the figure).

    .venv/bin/python benchmarks/catalog.py [--rows 100000] [--batches 1] [--root DIR_OR_URL]

The Delta path includes what a real commit pays: validating every receipt, a MERGE on
render_key (a join against what is already there) and the log commit. The plain-Parquet
path is the floor: one write, one read plus an `is_in` filter, no validation, no MERGE.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone

# This file is named like the package it measures: run as a script, its own folder comes first
# on sys.path and would shadow `catalog`. Put the repository root there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_HERE)] + [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from catalog import Store  # noqa: E402
from catalog.index import RENDER_SCHEMA  # noqa: E402
from catalog.receipts import normalize_receipt  # noqa: E402


def receipts(store: Store, n: int, offset: int = 0) -> list[dict]:
    now = datetime.now(timezone.utc)
    out = []
    for i in range(offset, offset + n):
        key = hashlib.sha256(f"render-{i}".encode()).hexdigest()
        sha = hashlib.sha256(f"blob-{i}".encode()).hexdigest()
        out.append({
            "render_key": key, "campaign_id": f"camp-{i % 20}", "shot_id": f"shot-{i // 12:06d}",
            "variant": f"{('en', 'zh', 'ja')[i % 3]}-16x9-t{i % 4 + 1}", "language": ("en", "zh", "ja")[i % 3],
            "aspect_ratio": "16:9", "take": i % 4 + 1, "seed": i, "blob_uri": store.blobs.uri(sha), "sha256": sha,
            "bytes": 4_000_000 + i, "status": "ok", "model_fingerprint": "f" * 64,
            "timings": {"denoise": 31.0, "decode": 5.8, "encode": 1.2}, "gpu_seconds": 38.0,
            "actor_id": f"actor-{i % 8}", "node_id": f"node-{i % 2}", "attempt": 1, "run_id": "bench",
            "created_at": now,
        })
    return out


def timed(fn):
    """(wall seconds, CPU seconds of this process incl. delta-rs threads, result)."""
    w, c = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - w, time.process_time() - c, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--batches", type=int, default=1, help="commit the rows in this many MERGEs")
    ap.add_argument("--root", default=None, help="store root (default: a temp directory)")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="horse-bench-catalog-")
    root = args.root or f"{tmp}/store"
    store = Store(root)
    n, per = args.rows, args.rows // args.batches
    rows = receipts(store, n)
    keys = [r["render_key"] for r in rows]
    lookup = keys[::2] + [hashlib.sha256(f"absent-{i}".encode()).hexdigest() for i in range(n - len(keys[::2]))]

    # validation + arrow conversion: the same work on both paths
    t_build = timed(lambda: pa.Table.from_pylist([normalize_receipt(r) for r in rows], schema=RENDER_SCHEMA))
    table = t_build[2]
    path = f"{tmp}/plain.parquet"
    t_pq_write = timed(lambda: pq.write_table(table, path))

    def pq_lookup():
        t = pq.read_table(path)
        return t.filter(pc.is_in(t["render_key"], value_set=pa.array(lookup))).to_pylist()

    t_pq_read = timed(pq_lookup)

    def commit():
        for b in range(args.batches):
            store.index.commit(rows[b * per:(b + 1) * per], run_id="bench")

    t_commit = timed(commit)
    # MERGE alone on prepared rows, into a second fresh table (what the index adds over a file write)
    other = Store(f"{tmp}/store2")
    t_merge = timed(lambda: [other.index._merge(table.slice(b * per, per), "bench", None) for b in range(args.batches)])
    t_recommit = timed(lambda: store.index.commit(rows[:per], run_id="bench"))
    t_exist = timed(lambda: store.index.existing(lookup))
    t_keys = timed(lambda: store.index.existing_keys(lookup))
    found, found_keys, found_pq = t_exist[2], t_keys[2], t_pq_read[2]
    assert len(found) == len(found_pq) == len(found_keys) == len(keys[::2]) and t_recommit[2].inserted == 0

    print(f"catalog index benchmark: {n:,} receipts in {args.batches} MERGE(s), {len(lookup):,} keys looked up "
          f"({len(found):,} present), root {store.url}")
    print(f"{'':40s} {'wall s':>8s} {'cpu s':>8s} | {'parquet':>8s} {'cpu s':>8s} | {'ratio wall':>10s} {'cpu':>6s}")

    def line(label, delta, floor=None, note=""):
        text = f"{label:40s} {delta[0]:8.3f} {delta[1]:8.3f}"
        if floor is not None:
            text += (f" | {floor[0]:8.3f} {floor[1]:8.3f} | {delta[0] / floor[0]:9.1f}x "
                     f"{delta[1] / max(floor[1], 1e-9):5.1f}x  {note}")
        print(text)

    both = (t_build[0] + t_pq_write[0], t_build[1] + t_pq_write[1])
    line("validate + to arrow (both paths)", t_build)
    line("commit 100k: validate+arrow+MERGE+log", t_commit, both, "vs validate+arrow+write_table")
    line("MERGE+log of prepared rows", t_merge, t_pq_write, "vs write_table")
    line("re-commit same rows (no-op MERGE)", t_recommit)
    line("existing(keys) -> rows", t_exist, t_pq_read, "vs read_table+is_in+to_pylist")
    line("existing_keys(keys) -> set", t_keys, t_pq_read, "vs read_table+is_in+to_pylist")
    print(f"Delta table version {store.index.version()}. The machine is shared: absolute times are noisy, "
          "the ratios are side by side in one run.")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
