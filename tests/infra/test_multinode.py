"""Two Ray nodes on one machine, started with `ray start` as on plain hosts (infra/README.md):
a head and a second node, each with one fake GPU, every listener on loopback. The pool puts one
render actor per GPU across both nodes; killing the second node mid-run loses no job.

The session `ray_cluster` fixture is a different cluster and a process can be connected to only
one, so the driver runs in a subprocess. Every Ray process started here is found by its own
temp dir or GCS port and killed by PID: other tests' clusters on this machine are left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.infra._procs import kill_processes

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))

# Ray 2.60 rewrites a loopback --address to the machine's own IP when it starts a non-head node
# (multi-node is meant for several hosts). On one host the head listens on 127.0.0.1 only, so the
# second node keeps the address as given; everything else is the stock `ray start` command.
JOIN_ON_LOOPBACK = r"""
import sys
import ray._private.services as services
services.resolve_ip_for_localhost = lambda host: host
from ray.scripts.scripts import main
sys.argv = ["ray", *sys.argv[1:]]
main()
"""

DRIVER = r"""
import json, os, sys, time
from horse_actors import ModelSpec, PoolConfig, RenderJob, RenderPool, Scheduling, StoreTarget
from model import RenderRequest
from tests.infra._procs import kill_processes

address, store_url, worker_temp_dir, n_jobs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
jobs = [RenderJob(f"multinode-{i:02d}", RenderRequest(prompt=f"a horse, take {i}", seconds=0.4, seed=i),
                  "multinode", f"s{i:03d}", "en-16x9-t1") for i in range(n_jobs)]

def kill_second_node():
    # What a host failure looks like to Ray: the node's raylet and everything under it vanish.
    return kill_processes([f"{worker_temp_dir}/session", f"temp-dir={worker_temp_dir}", f"temp_dir={worker_temp_dir}"])

events, state = [], {"killed_at": None, "head_node": None}

def on_outcome(outcome):
    events.append({"key": outcome.render_key, "status": outcome.status, "node": outcome.node_id,
                   "attempt": outcome.attempt, "after_kill": state["killed_at"] is not None})
    ok_nodes = {e["node"] for e in events if e["status"] == "ok"}
    if state["killed_at"] is None and len(ok_nodes) >= 2:
        state["killed"] = kill_second_node()
        state["killed_at"] = len(events)

config = PoolConfig(ModelSpec("tiny", warmup_seconds=0), StoreTarget(store_url),
                    scheduling=Scheduling(ray_address=address, gpus_per_actor=1.0, cpus_per_actor=1.0,
                                          max_in_flight_per_actor=2, max_retries=3,
                                          actor_start_timeout_s=120.0, job_deadline_s=240.0))
import ray
with RenderPool(config) as pool:
    placement = pool.start()
    nodes_before = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    outcomes = pool.run(jobs, on_outcome=on_outcome)
    nodes_after = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
print(json.dumps({
    "placement": placement, "nodes_before": nodes_before, "nodes_after": nodes_after,
    "outcomes": [{"key": o.render_key, "status": o.status, "node": o.node_id, "gpu_ids": o.gpu_ids,
                  "attempt": o.attempt, "sha256": o.sha256, "blob_uri": o.blob_uri, "error": o.error_message}
                 for o in outcomes],
    "events": events, "killed": state.get("killed"), "killed_at": state["killed_at"],
}))
"""


def _ray_env() -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": str(ROOT)}
    # Notice a dead node within seconds instead of the default ~30 s.
    env.update({"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "3"})
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture
def two_node_cluster():
    port = free_port()
    head_dir = Path(tempfile.mkdtemp(prefix="hrh-", dir="/tmp"))  # short: AF_UNIX paths
    worker_dir = Path(tempfile.mkdtemp(prefix="hrw-", dir="/tmp"))
    markers = [str(head_dir), str(worker_dir), f"127.0.0.1:{port}"]
    env = _ray_env()
    common = ["--num-cpus=2", "--num-gpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]
    try:
        # Head: multi-node off for the head's own process makes every listener bind 127.0.0.1.
        subprocess.run(
            [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
             "--include-dashboard=false", f"--ray-client-server-port={free_port()}",
             f"--temp-dir={head_dir}", *common],
            env={**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}, check=True, capture_output=True, timeout=120)
        subprocess.run(
            [sys.executable, "-c", JOIN_ON_LOOPBACK, "start", f"--address=127.0.0.1:{port}",
             "--node-ip-address=127.0.0.1", f"--temp-dir={worker_dir}", *common],
            env={**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}, check=True, capture_output=True, timeout=120)
        yield {"address": f"127.0.0.1:{port}", "worker_dir": str(worker_dir), "env": env}
    finally:
        kill_processes(markers)
        shutil.rmtree(head_dir, ignore_errors=True)
        shutil.rmtree(worker_dir, ignore_errors=True)


def test_pool_spreads_one_actor_per_gpu_over_two_nodes_and_survives_losing_one(two_node_cluster, tmp_store):
    n_jobs = 8
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, two_node_cluster["address"], tmp_store, two_node_cluster["worker_dir"], str(n_jobs)],
        cwd=ROOT, env={**two_node_cluster["env"], "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
        capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    # Two nodes, one fake GPU each: the pool made one actor per GPU, one on each node.
    assert len(result["nodes_before"]) == 2, result["nodes_before"]
    actor_nodes = {a.get("node_id") for a in result["placement"]}
    assert len(result["placement"]) == 2 and actor_nodes == set(result["nodes_before"]), result["placement"]
    assert all(len(a["gpu_ids"]) == 1 for a in result["placement"]), result["placement"]

    # The second node was killed mid-run, after both nodes had finished shots ...
    assert result["killed"] and result["killed_at"] is not None and result["killed_at"] < n_jobs
    assert len(result["nodes_after"]) == 1
    survivor = result["nodes_after"][0]
    assert {e["node"] for e in result["events"] if e["after_kill"] and e["status"] == "ok"} <= {survivor}

    # ... and no job was lost: every job finished ok exactly once, each blob is in the store.
    outcomes = result["outcomes"]
    assert sorted(o["key"] for o in outcomes) == [f"multinode-{i:02d}" for i in range(n_jobs)]
    assert all(o["status"] == "ok" for o in outcomes), [(o["key"], o["error"]) for o in outcomes if o["status"] != "ok"]
    assert len({o["sha256"] for o in outcomes}) == n_jobs
    store_root = Path(tmp_store.removeprefix("file://"))
    blobs = sorted(p.name for p in (store_root / "blobs").rglob("*.mp4"))
    assert blobs == sorted(f"{o['sha256']}.mp4" for o in outcomes)
    print(f"two-node run: {time.monotonic() - started:.1f}s, killed after {result['killed_at']} outcomes, "
          f"retried {sum(o['attempt'] > 1 for o in outcomes)}")
