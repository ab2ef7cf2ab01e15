"""Run `horse` the way a user or a script does: a fresh process, its exit code, its stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from flows.manifest import write_manifest


def horse(*args: str, env: dict[str, str] | None = None, unset: tuple[str, ...] = (), cwd: str | Path | None = None,
          timeout: float = 300) -> subprocess.CompletedProcess:
    """`horse ARGS` with this environment, plus `env`, less the variables named in `unset`."""
    environment = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=environment, timeout=timeout)


def horse_in_process(*args: str) -> subprocess.CompletedProcess:
    """`horse ARGS` run by the typer app in this process, reported as `horse()` reports it: for
    tests of what a command prints and its exit code, where the process boundary is not what is
    tested (a fresh `horse` process costs 1-7 CPU-s of imports before it reads its arguments).
    Never with --json: that makes file descriptor 1 a copy of stderr, for the whole process."""
    assert "--json" not in args, "--json claims this process's stdout: use horse()"
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, list(args))
    return subprocess.CompletedProcess(["horse", *args], result.exit_code, result.stdout, result.stderr)


def one_json_document(result: subprocess.CompletedProcess) -> dict[str, Any]:
    """stdout is exactly one JSON document (json.loads refuses anything before or after it)."""
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"stdout is not one JSON document ({exc}):\n{result.stdout[-3000:]}\n"
                             f"--- stderr:\n{result.stderr[-3000:]}") from None


def shot_row(shot_id: str, **overrides: Any) -> dict[str, Any]:
    row = {
        "campaign_id": "cli-spring", "shot_id": shot_id, "scene": f"Shot {shot_id}: rain on a tin roof.",
        "dialogue": [{"speaker": "a child", "language": "en", "line": "Listen."},
                     {"speaker": "a child", "language": "de", "line": "Hör mal."}],
        "languages": ["en"], "aspect_ratios": ["16:9"], "resolution": "256p", "duration_s": 1.0, "takes": 1, "seed": 3,
    }
    return {**row, **overrides}


def manifest(path: Path, shots: int = 3, **overrides: Any) -> Path:
    return write_manifest([shot_row(f"s{i:02d}", **overrides) for i in range(1, shots + 1)], path)


def config_file(tmp_path: Path, text: str = "ray: {cpu_mode: true, num_actors: 1, job_deadline_s: 300}\n") -> str:
    path = tmp_path / "horse.yaml"
    path.write_text(text)
    return str(path)
