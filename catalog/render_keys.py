"""render_key: the identity of a render.

sha256 over the canonical JSON of every input that changes pixels or sound. Same key means
same render, so reruns and backfills skip it. Canonical form: keys sorted, no whitespace,
UTF-8 (not ASCII-escaped), strings and keys NFC-normalised, integral floats written as
integers (5.0 seconds and 5 seconds are the same render), other floats in Python's shortest
round-trip form, tuples as lists. NaN, infinities, bytes and unknown objects are refused:
hash binary inputs first and pass the hash.
"""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from typing import Any

RENDER_KEY_VERSION = 1  # bump only if the canonical form itself changes


def _canonical(value: Any, path: str) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"render_key input {path} is {value!r}; only finite numbers are allowed")
        return int(value) if value.is_integer() else value
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"render_key input {path} has a non-string key {k!r}")
            nk = unicodedata.normalize("NFC", k)
            if nk in out:
                raise ValueError(f"render_key input {path} has two keys that normalise to {nk!r}")
            out[nk] = _canonical(v, f"{path}.{nk}")
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "item") and callable(value.item) and not hasattr(value, "__len__"):
        return _canonical(value.item(), path)  # numpy scalars, without importing numpy
    raise TypeError(
        f"render_key input {path} has type {type(value).__name__}; pass str, int, float, bool, "
        "None, list or dict (hash bytes and arrays first)"
    )


def canonical_json(value: Any) -> bytes:
    """The canonical JSON encoding used for render keys (and for stored receipts/manifests)."""
    return json.dumps(
        _canonical(value, "$"), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def render_key(inputs: dict) -> str:
    """sha256 hex of the canonical JSON of `inputs` (every input that changes the output)."""
    if not isinstance(inputs, dict):
        raise TypeError(f"render_key takes a dict of inputs, not {type(inputs).__name__}")
    return hashlib.sha256(canonical_json(inputs)).hexdigest()
