"""The one Ray internal horse_actors relies on: the switch that keeps a private cluster on loopback.

If a Ray upgrade renames or stops honouring it, this fails here, by name, instead of the
private cluster quietly listening on every interface. (test_plain_script.py checks the
listeners of a real cluster.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHECK = r"""
import os
os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)   # as on a user's machine
from horse_actors import cluster                             # imports ray: the constant is read now
from ray._private import services

with cluster._loopback_only():
    inside = services.get_node_ip_address()
    inherited = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
print(inside, inherited, os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"))
"""


def test_loopback_switch_still_moves_a_new_ray_node_to_127_0_0_1():
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    inside, inherited, after = done.stdout.split()
    assert inside == "127.0.0.1", "Ray no longer takes the node address from ENABLE_RAY_CLUSTER"
    assert inherited == "0", "the raylet and workers inherit the switch"
    assert after == "None", "the caller's environment is restored"
