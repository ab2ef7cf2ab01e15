"""RenderPool from a plain script: it starts its own loopback-only cluster and keeps the caller's
signal handlers (a Prefect flow's cancel bridge lives in its SIGTERM handler)."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = r"""
import json, os, signal, sys
os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # loopback binding must come from horse_actors
import psutil, ray
from horse_actors import ModelSpec, PoolConfig, RenderJob, RenderPool, Scheduling, StoreTarget
from model import RenderRequest

def on_term(signum, frame): pass
def on_int(signum, frame): pass
signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, on_int)

job = RenderJob("plain-script-job", RenderRequest(prompt="a horse", seconds=0.4, seed=3),
                "plain", "s001", "en-16x9-t1")
config = PoolConfig(ModelSpec("tiny", warmup_seconds=0), StoreTarget(sys.argv[1]), scheduling=Scheduling(cpu_mode=True))
with RenderPool(config) as pool:            # no ray.init before: the pool connects by itself
    [outcome] = pool.run([job])
    listeners = sorted({c.laddr.ip for p in psutil.Process().children(recursive=True)
                        for c in p.net_connections(kind="inet") if c.status == "LISTEN"})
    node_ip = ray.nodes()[0]["NodeManagerAddress"]
print(json.dumps({
    "status": outcome.status, "error": outcome.error_message, "gpu_ids": outcome.gpu_ids,
    "node_ip": node_ip, "listeners": listeners,
    "sigterm_kept": signal.getsignal(signal.SIGTERM) is on_term,
    "sigint_kept": signal.getsignal(signal.SIGINT) is on_int,
}))
"""


def test_pool_runs_from_a_plain_script_on_its_own_loopback_cluster(tmp_store):
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, tmp_store], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "ok", result["error"]
    assert result["gpu_ids"] == [], "cpu_mode actors hold no GPU"
    assert result["node_ip"] == "127.0.0.1"
    addresses = [ipaddress.ip_address(a) for a in result["listeners"]]
    addresses = [getattr(a, "ipv4_mapped", None) or a for a in addresses]  # ::ffff:127.0.0.1
    assert addresses and all(a.is_loopback for a in addresses), result["listeners"]
    assert result["sigterm_kept"] and result["sigint_kept"]
