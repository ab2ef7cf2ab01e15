"""Find and kill, by PID, the processes of one Ray node or cluster this test started.

A Ray node's processes all name its temp dir (or its GCS address) on their command line; their
children (actor workers) are taken along. Nothing is matched by program name, so other clusters
on the machine are never touched.
"""

from __future__ import annotations

import os

import psutil


def kill_processes(markers: list[str], timeout: float = 10.0) -> int:
    victims = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.pid != os.getpid() and any(marker in cmdline for marker in markers):
            victims.append(proc)
            try:
                victims += proc.children(recursive=True)
            except psutil.NoSuchProcess:
                pass
    for proc in victims:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=timeout)
    return len(victims)
