"""Index lookups read only what a plan needs: at 1M rows, a lookup of 10k keys in one campaign
reads that campaign's files (a few per cent of the table), not the table. Bytes are measured as
the process's own reads (/proc/self/io), not timed."""

import os

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc")]


def bytes_read(call) -> tuple[int, object]:
    """(bytes this process read from files and sockets during `call()`, its result)."""
    def rchar() -> int:
        with open("/proc/self/io") as f:
            return int(next(line for line in f if line.startswith("rchar:")).split()[1])

    before = rchar()
    result = call()
    return rchar() - before, result


def test_a_plans_lookup_reads_its_campaign_not_the_index(large_index):
    from benchmarks.scale import random_hex

    store = large_index
    table_bytes = sum(store.index.table.files()["size_bytes"].to_pylist())
    present = store.index.to_arrow("camp-00003")["render_key"].to_pylist()[:10_000]
    absent = random_hex(10_000, np.random.default_rng(5)).to_pylist()
    store.index.existing_keys(present[:10], campaigns=["camp-00004"])  # warm: imports, table handle

    one, found = bytes_read(lambda: store.index.existing_keys(present + absent, campaigns=["camp-00003"]))
    assert found == set(present)
    assert one < 0.1 * table_bytes, f"read {one:,} bytes of a {table_bytes:,}-byte index for one campaign"
    read, found = bytes_read(lambda: store.index.existing(absent, campaigns=["a-new-campaign"]))
    assert found == {} and read < 0.01 * table_bytes, f"read {read:,} bytes for a campaign the index lacks"

    # Without campaigns the lookup is global: it reads the same columns of every campaign (what
    # make_plan no longer does), so the measure above would have seen it.
    every, found = bytes_read(lambda: store.index.existing_keys(present + absent))
    assert found == set(present) and every > 10 * one, (every, one)


def test_planning_a_10k_variant_campaign_reads_only_that_campaign(large_index):
    from benchmarks.scale import campaign_manifest
    from flows.plan import ModelInfo, make_plan
    from model import describe_tiny

    store = large_index
    table_bytes = sum(store.index.table.files()["size_bytes"].to_pylist())
    described = describe_tiny()
    model = ModelInfo(described.fingerprint, "distill", described.size_for)
    shots = campaign_manifest("tonight", 10_000)
    make_plan(shots[:2], model, store)  # warm

    read, plan = bytes_read(lambda: make_plan(shots, model, store))
    assert len(plan.jobs) == 10_000 and not plan.cached and read < 0.01 * table_bytes
    store.index.commit([{**job.entry(), "status": "ok", "blob_uri": store.blobs.uri("0" * 64), "sha256": "0" * 64}
                        for job in plan.jobs])
    read, plan = bytes_read(lambda: make_plan(shots, model, store))
    assert len(plan.cached) == 10_000 and read < 0.1 * table_bytes, f"read {read:,} of {table_bytes:,} bytes"
