"""Brand adapters on resident render actors (session Ray cluster, 2 fake-GPU actors, tiny model):
jobs with different adapters in a row on one actor give what each gives alone, the actor reads
each adapter from the catalog once and never reloads the model, and the pool sends a job to the
actor that already holds its adapter (seen in the actors' own adapter logs, not in timings)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from actors_testlib import make_jobs, pool_config
from clip_hashing_actor import ClipHashingActor
from catalog import Store
from horse_actors import ModelSpec, RenderPool, StoreTarget
from model import Adapter, AdapterConfig
from model.adapters import tensor_shapes

pytestmark = pytest.mark.slow


def random_adapter(pipe, seed: int) -> Adapter:
    cfg = AdapterConfig(rank=4, alpha=4, stage="distill", base_fingerprint=pipe.dit_fingerprints["distill"])
    gen = torch.Generator().manual_seed(seed)
    return Adapter(cfg, {k: torch.randn(s, generator=gen) * 0.05 for k, s in tensor_shapes(cfg, pipe.dits["distill"]).items()})


def _clips(pool) -> dict[str, str]:
    return {key: digest for s in pool.actor_stats() for key, digest in s["clip_hashes"].items()}


def test_adapter_jobs_in_a_row_equal_each_alone_and_go_to_the_actor_holding_their_adapter(ray_cluster, tmp_store):
    store = Store(tmp_store)
    local = ClipHashingActor(ModelSpec("tiny", warmup_seconds=0), StoreTarget(tmp_store))   # "alone": a fresh actor
    adapters = {name: random_adapter(local.pipe, seed) for name, seed in (("a", 1), ("b", 2))}
    for name, adapter in adapters.items():
        store.adapters.register(f"brand-{name}", adapter.to_bytes(), adapter.config.to_dict())
    plain_a, plain_b = make_jobs(2, seconds=0.4)
    job_a = dataclasses.replace(plain_a, adapter_sha256=adapters["a"].sha256, adapter_strength=0.7)
    job_b = dataclasses.replace(plain_b, adapter_sha256=adapters["b"].sha256)
    b_alone = local.render(job_b)
    local.render(plain_a)
    rendered = local.stats()["clip_hashes"]          # what each clip was before encoding, by render key

    with RenderPool(pool_config(tmp_store), actor_class=ClipHashingActor) as pool:
        pool.start()
        [a_alone] = pool.run([job_a])                  # both actors idle: the first one takes it
        a_alone_clip = _clips(pool)[job_a.render_key]
        b_then_a = pool.run([job_b, job_a])            # b: least loaded (the first actor again); a: its holder
        stats = {s["actor_id"]: s for s in pool.actor_stats()}
        after = _clips(pool)

    assert all(o.ok for o in (a_alone, b_alone, *b_then_a)), [o.error_message for o in (a_alone, b_alone, *b_then_a)]
    b_after_a, a_after_b = b_then_a
    assert b_alone.ok and after[job_b.render_key] == rendered[job_b.render_key]        # b after a == b alone
    assert after[job_a.render_key] == a_alone_clip                                     # a after b == a alone
    assert a_alone_clip != rendered[plain_a.render_key]                                # the adapter changed the clip
    assert a_alone.actor_id == b_after_a.actor_id == a_after_b.actor_id                 # affinity: the holder
    holder, other = stats[a_alone.actor_id], next(s for k, s in stats.items() if k != a_alone.actor_id)
    assert holder["adapter_loads"] == [adapters["a"].sha256, adapters["b"].sha256]     # a read once, then held
    assert holder["load_count"] == 1 and other["adapter_loads"] == [] and other["renders"] == 0
    assert "adapter" in a_alone.timings and "adapter" not in a_after_b.timings
