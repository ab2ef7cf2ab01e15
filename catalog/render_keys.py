"""render_key: the identity of a render.

sha256 over the canonical JSON of every input that changes pixels or sound. Same key means
same render, so reruns and backfills skip it. Canonical form: keys sorted, no whitespace,
UTF-8 (not ASCII-escaped), strings and keys NFC-normalised, integral floats written as
integers (5.0 seconds and 5 seconds are the same render), other floats in Python's shortest
round-trip form, tuples as lists. NaN, infinities, bytes and unknown objects are refused:
hash binary inputs first and pass the hash.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import operator
import unicodedata
from typing import Any

RENDER_KEY_VERSION = 1  # bump only if the canonical form itself changes


def _canonical(value: Any, path: Any) -> Any:
    """`value` in canonical form. `path` names where it sits for error messages: "$", or a
    (parent path, key or index) pair, made into text only for an error (`_where`): planning makes
    hundreds of thousands of keys."""
    kind = type(value)
    if kind is str:
        return unicodedata.normalize("NFC", value)
    if value is None or kind is bool or kind is int:
        return value
    if kind is dict:
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"render_key input {_where(path)} has a non-string key {k!r}")
            nk = unicodedata.normalize("NFC", k)
            if nk in out:
                raise ValueError(f"render_key input {_where(path)} has two keys that normalise to {nk!r}")
            out[nk] = _canonical(v, (path, nk))
        return out
    if isinstance(value, int):  # an int subclass (IntEnum); bool cannot be subclassed
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"render_key input {_where(path)} is {value!r}; only finite numbers are allowed")
        return int(value) if value.is_integer() else float(value)
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, dict):
        return _canonical(dict(value), path)
    if isinstance(value, (list, tuple)):
        return [_canonical(v, (path, i)) for i, v in enumerate(value)]
    if hasattr(value, "item") and callable(value.item) and not hasattr(value, "__len__"):
        return _canonical(value.item(), path)  # numpy scalars, without importing numpy
    raise TypeError(
        f"render_key input {_where(path)} has type {type(value).__name__}; pass str, int, float, bool, "
        "None, list or dict (hash bytes and arrays first)"
    )


def _where(path: Any) -> str:
    """"$.a.b[2]" from ((("$", "a"), "b"), 2)."""
    parts = []
    while isinstance(path, tuple):
        path, part = path
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return path + "".join(reversed(parts))


# One encoder for every canonical JSON text (json.dumps with these options builds a new one per call).
_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(value: Any) -> bytes:
    """The canonical JSON encoding used for render keys (and for stored receipts/manifests)."""
    return _JSON.encode(_canonical(value, "$")).encode("utf-8")


def render_key(inputs: dict) -> str:
    """sha256 hex of the canonical JSON of `inputs` (every input that changes the output)."""
    if not isinstance(inputs, dict):
        raise TypeError(f"render_key takes a dict of inputs, not {type(inputs).__name__}")
    return hashlib.sha256(canonical_json(inputs)).hexdigest()


def render_key_grid(shared: dict, rows: list[dict], variants: list[dict]) -> list[list[str]]:
    """`[[render_key({**shared, **row, **variant}) for variant in variants] for row in rows]`:
    every variant names the same inputs; no input is named by two of `shared`, a row and a variant.

    A planner keys hundreds of thousands of variants: a shot's inputs (`shared`), then each of its
    languages' (a row: prompt, language), then each (aspect ratio, take)'s (a variant: size, seed).
    So the canonical JSON of the merged inputs is written once per row with a gap for each
    per-variant value (keys are sorted, and JSON encodes each value on its own), and each variant
    only fills those in. The text of `shared` around the gaps is kept for the next calls when its
    values are plain (str, int, float, bool, None: equal values of one type write the same text),
    since most of a night's shots share resolution, duration, model and references."""
    if not rows or not variants:
        return [[] for _ in rows]
    if type(shared) is dict:
        keys = _grid(shared, rows, variants, plain_names=True)
        if keys is not None:
            return keys
    # Anything else (names to normalise, dict subclasses, a mismatch to report) in canonical form first.
    shared, rows, variants = _canonical_dict(shared), [_canonical_dict(row) for row in rows], \
        [_canonical_dict(variant) for variant in variants]
    names = sorted(variants[0])
    for variant in variants:
        if variant.keys() != variants[0].keys():
            raise ValueError(f"render keys: every variant names {names}, not {sorted(variant)}")
    keys = _grid(shared, rows, variants, plain_names=False)
    if keys is None:
        raise ValueError(f"render keys: every variant names {names} and nothing shared or per row "
                         f"(shared: {sorted(shared)}, rows: {sorted({name for row in rows for name in row})})")
    return keys


def _canonical_dict(inputs: Any) -> dict:
    if not isinstance(inputs, dict):
        raise TypeError(f"render keys take dicts of inputs, not {type(inputs).__name__}")
    return _canonical(inputs, "$")


# The row texts (`_row_format`) of recent calls' shared inputs, by their names, the variants'
# names and their plain values' types and values; then by a row's names (render_key_grid).
_ROW_FORMATS: dict[tuple, dict[tuple, tuple[str, tuple, Any]]] = {}
_PLAIN = frozenset({str, int, float, bool, type(None)})


def _grid(shared: dict, rows: list[dict], variants: list[dict], plain_names: bool) -> list[list[str]] | None:
    """render_key_grid's keys; None for what the canonical path must look at first: a dict
    subclass, variants naming different inputs, two inputs of one name, or (`plain_names`) a name
    that is not plain ASCII (which would need normalising)."""
    first = variants[0]
    if type(first) is not dict:
        return None
    shared_names, variant_names, values = tuple(shared), tuple(first), tuple(shared.values())
    types = tuple(map(type, values))
    memo = (shared_names, variant_names, types, values) if plain_names and _PLAIN.issuperset(types) else None
    formats = _ROW_FORMATS.get(memo) if memo is not None else None
    if formats is None:
        formats = {}
        if memo is not None:
            if len(_ROW_FORMATS) >= 256:  # a night has a few; references of their own make one per shot
                _ROW_FORMATS.clear()
            _ROW_FORMATS[memo] = formats
    slots, fills = _sorted(variant_names), []
    values_of, encode = _values_of(slots), json.encoder.encode_basestring
    for variant in variants:
        if type(variant) is not dict or variant.keys() != first.keys():
            return None
        # ints and ASCII text (sizes, seeds, aspect ratios) written inline: a planner fills in
        # hundreds of thousands; anything else as _scalar_text writes it
        own = values_of(variant)
        texts = tuple([int.__repr__(value) if type(value) is int else encode(value)
                       if type(value) is str and value.isascii() else None for value in own])
        fills.append(texts if None not in texts else
                     tuple([_scalar_text(value, name) for name, value in zip(slots, own)]))
    keys, sha256 = [], hashlib.sha256
    for row in rows:
        if type(row) is not dict:
            return None
        row_names = tuple(row)
        found = formats.get(row_names)
        if found is None:
            layout = _layout(shared_names, row_names, variant_names, plain_names)
            if layout is None:
                return None
            row_slots = _sorted(row_names)
            found = formats[row_names] = _row_format(layout, shared), row_slots, _values_of(row_slots)
        row_format, row_slots, row_values_of = found
        template = row_format % tuple([(encode(value) if type(value) is str and value.isascii()
                                        else _scalar_text(value, name)).replace("%", "%%")
                                       for name, value in zip(row_slots, row_values_of(row))])
        keys.append([sha256((template % fill).encode("utf-8")).hexdigest() for fill in fills])
    return keys


@functools.lru_cache(maxsize=256)
def _sorted(names: tuple) -> tuple:
    return tuple(sorted(names))


@functools.lru_cache(maxsize=256)
def _values_of(names: tuple):
    """A function from a dict to the tuple of its values of `names`, in that order."""
    if len(names) > 1:
        return operator.itemgetter(*names)
    return lambda inputs: tuple(inputs[name] for name in names)


@functools.lru_cache(maxsize=256)
def _layout(shared_names: tuple, row_names: tuple, variant_names: tuple, plain_names: bool):
    """The merged object's members in order: (name, its '"name":' text, 0 shared / 1 per row / 2
    per variant); None when two name one input, or (`plain_names`) a name is not plain ASCII
    (canonical as it is, so it sorts and encodes as written)."""
    names = {*shared_names, *row_names, *variant_names}
    if len(names) != len(shared_names) + len(row_names) + len(variant_names):
        return None
    if plain_names and not all(type(name) is str and name.isascii() for name in names):
        return None
    row, variant = set(row_names), set(variant_names)
    return [(name, json.encoder.encode_basestring(name) + ":", 2 if name in variant else 1 if name in row else 0)
            for name in sorted(names)]


def _row_format(layout: list, shared: dict) -> str:
    """The canonical JSON text of the merged inputs with `shared`'s values written in: a %s for
    each per-row value, a %%s for each per-variant value, every other % written %%%% (a row's
    values are then %-filled in with their own % doubled, and a variant's values into that)."""
    return "{" + ",".join([
        (label + _scalar_text(shared[name], name)).replace("%", "%%%%") if source == 0
        else label.replace("%", "%%%%") + ("%s" if source == 1 else "%%s")
        for name, label, source in layout]) + "}"


def _scalar_text(value: Any, name: str) -> str:
    """The canonical JSON text of one input's value: what `_canonical` then `_JSON` write for it."""
    kind = type(value)
    if kind is str:
        return json.encoder.encode_basestring(value if value.isascii() else unicodedata.normalize("NFC", value))
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    if kind is float and math.isfinite(value):
        return int.__repr__(int(value)) if value.is_integer() else float.__repr__(value)
    return _JSON.encode(_canonical(value, ("$", name)))
