"""`horse ui` stops its Prefect server however it is stopped: Ctrl-C in a terminal, SIGTERM from
a service manager or a container runtime. The server's output goes to a log file, and a server
that cannot start says why."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from tests.conftest import ctrl_c_reaches_children, free_port

pytestmark = pytest.mark.slow


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).json() is True
    except (httpx.HTTPError, ValueError):
        return False


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_horse_ui_stops_its_server(stop, tmp_path):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    with ctrl_c_reaches_children():
        ui = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240
        while not healthy(port) and ui.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert healthy(port), "horse ui came up"
        server = psutil.Process(ui.pid).children(recursive=True)
        assert server, "the Prefect server runs in a child process"
        log = tmp_path / "prefect-home" / f"horse-ui-server-{port}.log"
        for process in server:  # a file, not a pipe that fills up when nobody reads it
            assert {os.readlink(f"/proc/{process.pid}/fd/{fd}") for fd in (1, 2)} == {str(log)}, process.cmdline()

        ui.send_signal(stop)
        assert ui.wait(timeout=60) == 0, "horse ui stops cleanly"
        _, alive = psutil.wait_procs(server, timeout=30)
        assert alive == [], f"server processes left running: {alive}"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:  # leave nothing behind when the test fails
        ui.kill()  # a no-op once it has exited
        for process in server:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def test_horse_ui_says_why_its_server_did_not_start(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)
    with taken:
        ui = subprocess.run([sys.executable, "-m", "flows.cli", "ui", "--port", str(taken.getsockname()[1])],
                            env=env, capture_output=True, text=True, timeout=120)
    assert ui.returncode == 1
    assert "did not start" in ui.stdout and "is already in use" in ui.stdout, ui.stdout + ui.stderr
