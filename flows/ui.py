"""`horse ui`: the Prefect server with its UI on 127.0.0.1.

The port goes in through the server's settings (PREFECT_SERVER_API_HOST/PORT), not `--port`:
with the flag, the UI still points its API calls at the default port 4200 (research §3).
The server uses the same PREFECT_HOME database as the embedded API, so runs made by
`horse demo` and `horse render` appear in it. Its output goes to a log file there, never to a
pipe: a pipe nobody reads while the server runs fills up and stops the server mid-write.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.markup import escape


def server_env(port: int) -> dict[str, str]:
    return {
        **os.environ,
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
    }


def server_log_path(port: int) -> Path:
    """Where `horse ui` writes its server's output: beside Prefect's database, a file per port,
    started afresh by each `horse ui` on that port."""
    from prefect.settings import get_current_settings

    return Path(get_current_settings().home).expanduser() / f"horse-ui-server-{port}.log"


def start_server(port: int, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as output:  # the server holds its own copy of the file
        return subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env or server_env(port),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us; we stop the server ourselves
        )


def log_tail(log: Path, limit: int = 2000) -> str:
    with log.open("rb") as f:
        f.seek(max(f.seek(0, os.SEEK_END) - limit, 0))
        return f.read().decode(errors="replace")


def wait_healthy(port: int, process: subprocess.Popen, timeout_s: float = 180.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).json() is True:
                return True
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    return False


def stop_server(process: subprocess.Popen) -> None:
    """Stop the server and anything it started (its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_ui(port: int, console: Console) -> int:
    # A service manager or a container runtime stops us with SIGTERM: stop the server as on Ctrl-C
    # (the server runs in its own session, so no signal reaches it unless we send one).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    log = server_log_path(port)
    console.print(f"starting the Prefect server on 127.0.0.1:{port} (its log: {log}) ...")
    process = start_server(port, log)
    try:
        if not wait_healthy(port, process):
            error = log_tail(log) if process.poll() is not None else f"no healthy answer in time (its log: {log})"
            console.print(f"[red]the Prefect server did not start:[/red] {escape(error)}")
            return 1
        console.print(f"Prefect UI: [bold]http://127.0.0.1:{port}[/bold]  (runs, artifacts, deployments)")
        console.print(f"to send runs here from another shell: export PREFECT_API_URL=http://127.0.0.1:{port}/api")
        console.print("press Ctrl-C to stop")
        while process.poll() is None:
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        console.print("stopping ...")
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut the stop short
            signal.signal(sig, signal.SIG_IGN)
        stop_server(process)
