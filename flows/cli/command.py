"""What every `horse` command shares: its process environment, settings, errors and output.

`run_command` is the one wrapper around a command's body. It loads the settings (before the body
imports Prefect, which reads its configuration from the environment once, on import), turns
errors into one-line messages, prints the body's `Outcome` as tables or as one JSON document, and
exits with 0 (all good), 1 (some shots or checks failed, or an error) or 2 (invalid input or
configuration).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, NoReturn, Optional, TextIO

import typer
from rich.console import Console
from rich.markup import escape

from flows.settings import ConfigError, HorseSettings, load_settings

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2

console = Console()  # human output
err_console = Console(stderr=True, soft_wrap=True)  # progress, warnings, errors: a message stays one line

JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document instead of tables")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML config file (also HORSE_CONFIG)")]
StoreOpt = Annotated[Optional[str], typer.Option("--store", help="store root URL: path, file://, s3://, gs://")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="model preset (tiny, ...) or checkpoint folder")]
RayOpt = Annotated[Optional[str], typer.Option("--ray-address", help="'auto' or host:port; default: private local cluster")]

# Defaults for the libraries' own settings, unless the user set them. Prefect's embedded
# ("ephemeral") API server must start within 20 s by default, but its first start on a new
# machine migrates a fresh database: about 23 s on 2 idle cores, more on a loaded machine.
LIBRARY_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # the server's usage report at start-up
    "DO_NOT_TRACK": "1",  # Prefect's client-side (SDK) analytics
    "RAY_USAGE_STATS_ENABLED": "0",
}


def set_library_defaults() -> None:
    """Call before Prefect or Ray is imported: both read these once, on import."""
    for name, value in LIBRARY_DEFAULTS.items():
        os.environ.setdefault(name, value)


class InvalidInput(Exception):
    """The user's input (a manifest, an id, a file) cannot be used: exit 2 with this message."""


@contextmanager
def invalid_input(*errors: type[Exception]) -> Iterator[None]:
    """Errors of these types raised inside mean the user's input is wrong (exit 2)."""
    try:
        yield
    except errors as exc:
        raise InvalidInput(str(exc)) from None


@dataclass
class Outcome:
    """What a command body produced: the `--json` document (its `ok` says whether everything
    went well), how to show it to a person, and the exit code (default: 0 if ok, else 1)."""

    document: dict[str, Any]
    show: Callable[[], None] = lambda: None
    code: int | None = None

    @property
    def exit_code(self) -> int:
        if self.code is not None:
            return self.code
        return EXIT_OK if self.document.get("ok") else EXIT_FAILED


def run_command(
    as_json: bool,
    body: Callable[[HorseSettings], Outcome],
    config: Path | None = None,
    store: str | None = None,
    model: str | None = None,
    ray_address: str | None = None,
    budget: dict[str, Any] | None = None,
) -> NoReturn:
    """Run one command: settings from the config file, environment and flags, then the body.
    Configuration and input errors exit 2, any other error 1, each with a one-line message
    (HORSE_DEBUG=1 raises instead, to show the traceback)."""
    emit = claim_stdout_for_json() if as_json else None
    try:
        outcome = body(_load_settings(config, store, model, ray_address, budget))
    except (ConfigError, InvalidInput) as exc:
        outcome = _error(str(exc), EXIT_INVALID)
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as exc:
        if os.environ.get("HORSE_DEBUG"):
            raise
        outcome = _error(f"{type(exc).__name__}: {exc} (set HORSE_DEBUG=1 for the traceback)", EXIT_FAILED)
    if emit:
        emit(outcome.document)
    else:
        outcome.show()
    raise typer.Exit(outcome.exit_code)


def _error(message: str, code: int) -> Outcome:
    return Outcome({"ok": False, "error": message}, lambda: err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False), code)


def _load_settings(config: Path | None, store: str | None, model: str | None, ray_address: str | None,
                   budget: dict[str, Any] | None = None) -> HorseSettings:
    settings = load_settings(config, store_url=store, model=model, ray={"address": ray_address} if ray_address else None,
                             budget=budget)
    if settings.prefect.api_url and "PREFECT_API_URL" not in os.environ:
        os.environ["PREFECT_API_URL"] = settings.prefect.api_url  # read by Prefect on import
    return settings


def claim_stdout_for_json() -> Callable[[dict[str, Any]], None]:
    """Keep stdout for the one JSON document: from here on file descriptor 1 is stderr.

    Not only Python prints: Ray's driver ("(raylet) A worker died ..."), native libraries
    and child processes (Ray workers, Prefect's server) write to fd 1 directly. So fd 1 itself
    becomes a copy of stderr, which children inherit, and the real stdout lives on only in a
    private descriptor (not inherited) that the returned function writes the document to, once.
    """
    sys.stdout.flush()
    stdout = os.dup(1)
    os.dup2(2, 1)

    def emit(document: dict[str, Any]) -> None:
        with open(stdout, "w", encoding="utf-8") as out:  # closing it: nothing can follow
            write_json(document, out)

    return emit


_ONE_LINE = json.JSONEncoder(default=str)


def write_json(document: dict[str, Any], out: TextIO) -> None:
    """`json.dump(document, out, indent=2)`, except a top-level value that is a Sequence but not a
    list (a listing made as it is read, like a plan's 400k job rows: flows.dry_run.JobRows) is
    written as each item is made, one item per line. Built whole, such a listing would hold more
    memory than the plan it lists, and indenting it would take seconds."""
    if not any(_made_as_read(value) for value in document.values()):
        out.write(json.dumps(document, indent=2, default=str) + "\n")
        return
    out.write("{")
    for i, (key, value) in enumerate(document.items()):
        out.write(("," if i else "") + "\n  " + json.dumps(key) + ": ")
        if _made_as_read(value):
            out.write("[")
            for n, item in enumerate(value):
                out.write(("," if n else "") + "\n    " + _ONE_LINE.encode(item))
            out.write("\n  ]" if len(value) else "]")
        else:  # JSON text has no raw newlines inside strings: every line break is the layout's
            out.write(json.dumps(value, indent=2, default=str).replace("\n", "\n  "))
    out.write("\n}\n")


def _made_as_read(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (list, tuple, str, bytes))
