"""Waiting out an object store that cannot be reached, then failing loudly.

A store that is briefly unreachable (a network blip, a restarting MinIO) must not fail a night of
renders. botocore and delta-rs already retry each request for a few seconds; on top of that every
store operation (reads, listings, writes, Delta table loads and commits, lineage events) is
retried with exponential backoff for up to HORSE_STORE_RETRY_SECONDS (default 120, read at each
call), and then its last error is raised. Only errors that say the store could not be reached are
waited out: a missing key, a refused credential or a commit conflict is answered at once, and an
error is never turned into "absent". Every operation is safe to repeat: writes are
create-if-absent or whole-object replaces, Delta commits are MERGEs on their keys.
"""

from __future__ import annotations

import functools
import os
import re
import time
from typing import Callable, TypeVar

from .redact import get_logger

log = get_logger(__name__)
T = TypeVar("T")

DEFAULT_RETRY_SECONDS = 120.0
MAX_DELAY_SECONDS = 30.0

# delta-rs (object_store) reports transport failures as a plain OSError whose text ends in the
# underlying cause, e.g. "... HTTP error ... error sending request ... Connection refused".
_TRANSPORT_ERROR = re.compile(
    r"error sending request|tcp connect error|connection (refused|reset|closed|aborted)|timed out|dns error"
    r"|broken pipe|status(?: code)?:? 50[0234]\b",
    re.IGNORECASE,
)


def retry_seconds() -> float:
    return float(os.environ.get("HORSE_STORE_RETRY_SECONDS", DEFAULT_RETRY_SECONDS))


@functools.cache
def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError, HTTPClientError

        errors += [BotoConnectionError, HTTPClientError]
    except ImportError:  # pragma: no cover - s3fs brings botocore
        pass
    try:
        from aiohttp import ClientConnectionError  # gcsfs, and s3fs underneath aiobotocore

        errors.append(ClientConnectionError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def is_unreachable(exc: BaseException) -> bool:
    """True if `exc` (or what caused it) says the store could not be reached or is unavailable.
    A missing, existing or forbidden object is an answer from the store, whatever led to it."""
    if isinstance(exc, (FileNotFoundError, FileExistsError, PermissionError)):
        return False
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, _transport_errors()):
            return True
        status = getattr(exc, "response", None)
        status = status.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(status, dict) else None
        if isinstance(status, int) and status in (500, 502, 503, 504):
            return True
        if isinstance(exc, OSError) and _TRANSPORT_ERROR.search(str(exc)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def wait_out_outage(call: Callable[[], T], what: str, where: str) -> T:
    """`call()`, repeated with exponential backoff while the store is unreachable, for up to
    retry_seconds(); then the last error is raised."""
    deadline = time.monotonic() + retry_seconds()
    delay = 1.0
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            if time.monotonic() + delay > deadline:
                log.error("store %s still unreachable during %s after %.0fs; giving up (%s)",
                          where, what, retry_seconds(), type(exc).__name__)
                raise
            log.warning("store %s unreachable during %s (%s); retrying in %.0fs", where, what, type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, MAX_DELAY_SECONDS)
