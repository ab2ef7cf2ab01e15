"""Planning a night at studio scale: validate a manifest and expand it into N variants with render
keys and one catalog lookup, next to the floor — hashing the same N canonical JSON documents in
a bare loop (the ratio is the figure).

    .venv/bin/python benchmarks/plan.py [--variants 100000] [--cached-fraction 0.5]

Half of the variants (by default) are already in the index, as on a night after a backfill.
The model is described by its fingerprint and size table only; no weights are loaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

# benchmarks/catalog.py would shadow the `catalog` package when this runs as a script.
sys.path[:] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))] + sys.path[1:]

from catalog import Store  # noqa: E402
from flows.manifest import validate_rows  # noqa: E402
from flows.plan import ModelInfo, make_plan  # noqa: E402
from model import HappyHorsePipeline  # noqa: E402

LANGUAGES = ["en", "de", "ja", "fr"]
ASPECTS = ["16:9", "9:16"]


def rows(n_shots: int) -> list[dict]:
    return [
        {
            "campaign_id": f"campaign-{i // 1000:03d}",
            "shot_id": f"s{i:06d}",
            "scene": f"Shot {i}: a woman in a cream sweater lifts a glass teapot and smiles at the camera.",
            "dialogue": [{"speaker": "woman", "language": code, "line": f"Line {i} in {code}."} for code in LANGUAGES],
            "languages": LANGUAGES,
            "aspect_ratios": ASPECTS,
            "resolution": "540p",
            "duration_s": 5.0,
            "takes": 1,
            "seed": i,
        }
        for i in range(n_shots)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=100_000)
    parser.add_argument("--cached-fraction", type=float, default=0.5)
    args = parser.parse_args()
    per_shot = len(LANGUAGES) * len(ASPECTS)
    records = rows(args.variants // per_shot)
    pipe = HappyHorsePipeline.tiny()
    model = ModelInfo(pipe.fingerprint, "distill", pipe.size_for)
    root = tempfile.mkdtemp(prefix="horse-bench-plan-")
    try:
        store = Store(root)
        t0 = time.perf_counter()
        shots, errors = validate_rows(records)
        t_validate = time.perf_counter() - t0
        assert not errors

        # Seed the index with a fraction of the keys (as receipts of earlier nights).
        first = make_plan(shots, model, store)
        seeded = first.jobs[: int(len(first.jobs) * args.cached_fraction)]
        store.index.commit([{**job.entry(), "status": "ok", "blob_uri": store.blobs.uri("0" * 64), "sha256": "0" * 64}
                            for job in seeded])

        t0 = time.perf_counter()
        plan = make_plan(shots, model, store)
        t_plan = time.perf_counter() - t0

        t0 = time.perf_counter()
        for job in plan.jobs:  # the floor: the hashing alone, on the same inputs
            hashlib.sha256(json.dumps(job.key_inputs, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        t_floor = time.perf_counter() - t0
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"{len(records)} manifest rows -> {len(plan.jobs)} variants, {len(plan.cached)} already rendered")
    print(f"validate rows          {t_validate:8.2f} s")
    print(f"plan (expand + keys + one index lookup) {t_plan:8.2f} s")
    print(f"floor: sha256 of the same canonical JSON {t_floor:8.2f} s")
    print(f"ratio plan / floor     {t_plan / t_floor:8.1f}x")
    print(f"per variant            {1e6 * t_plan / len(plan.jobs):8.1f} us")


if __name__ == "__main__":
    main()
