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


def _json_text(value: Any) -> str:
    """The canonical JSON text of one canonical value; the common scalars without the encoder's
    per-call set-up (it is what the encoder writes for them: ints in decimal, strings escaped)."""
    kind = type(value)
    if kind is str:
        return json.encoder.encode_basestring(value)
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    return _JSON.encode(value)


def canonical_json(value: Any) -> bytes:
    """The canonical JSON encoding used for render keys (and for stored receipts/manifests)."""
    return _JSON.encode(_canonical(value, "$")).encode("utf-8")


def render_key(inputs: dict) -> str:
    """sha256 hex of the canonical JSON of `inputs` (every input that changes the output)."""
    if not isinstance(inputs, dict):
        raise TypeError(f"render_key takes a dict of inputs, not {type(inputs).__name__}")
    return hashlib.sha256(canonical_json(inputs)).hexdigest()


def variant_render_keys(shared: dict, variants: list[dict]) -> list[str]:
    """`render_key({**shared, **variant})` for each variant; every variant names the same inputs
    and none of `shared`'s.

    The variants of one shot share most inputs (prompt, model, references) and differ in a few
    (aspect ratio, size, seed), and a planner keys hundreds of thousands of them. So the canonical
    JSON of the merged inputs is written once with a gap for each per-variant value (keys are
    sorted, and JSON encodes each value on its own), and each variant only fills those in."""
    if not variants:
        return []
    template, slots = _shared_template(shared, variants[0])
    keys, names_per_variant = [], set(slots)
    encode, sha256 = json.encoder.encode_basestring, hashlib.sha256
    for variant in variants:
        texts = None
        if type(variant) is dict and variant.keys() == names_per_variant:
            # Plain ints and ASCII text (a planner's aspect ratios, sizes, seeds) are canonical as they are.
            texts = [int.__repr__(v) if type(v) is int else encode(v) if type(v) is str and v.isascii() else None
                     for v in [variant[name] for name in slots]]
        if texts is None or None in texts:
            own = _canonical(variant, "$")
            if own.keys() != names_per_variant:
                raise ValueError(f"variant_render_keys: every variant names {slots} and nothing shared, not {sorted(own)}")
            texts = [_json_text(own[name]) for name in slots]
        keys.append(sha256((template % tuple(texts)).encode("utf-8")).hexdigest())
    return keys


def _shared_template(shared: dict, variant: dict) -> tuple[str, list[str]]:
    """(the canonical JSON text of `shared` merged with a variant's inputs, with a %s for each of
    the variant's values and every other % doubled; the variant's input names, in the order they
    fill the gaps)."""
    if type(shared) is dict and type(variant) is dict:
        layout = _layout(tuple(shared), tuple(variant))
        if layout is not None:
            members, slots = layout
            return "{" + ",".join([label if own else label + _scalar_text(shared[name], name).replace("%", "%%")
                                   for name, label, own in members]) + "}", slots
    texts, slots = _shared_texts_general(shared, variant)
    return "%s".join(text.replace("%", "%%") for text in texts), slots


@functools.lru_cache(maxsize=256)
def _layout(shared_names: tuple, variant_names: tuple):
    """The merged object's members in order, (name, its '"name":' text (and a %s gap when the
    variant gives it) with % doubled, whether the variant gives it), and the variant's names in
    that order, for inputs named by plain ASCII keys (canonical as they are, so they sort and
    encode as written); None for anything else. A planner keys every variant of a night with one
    or two layouts."""
    if not all(type(k) is str and k.isascii() for k in (*shared_names, *variant_names)) \
            or set(shared_names) & set(variant_names):
        return None
    members = [(name, json.encoder.encode_basestring(name).replace("%", "%%") + ":" + ("%s" if own else ""), own)
               for name, own in ((name, name in variant_names) for name in sorted({*shared_names, *variant_names}))]
    return members, [name for name, _, own in members if own]


def _scalar_text(value: Any, name: str) -> str:
    """The canonical JSON text of one shared input: what `_canonical` then `_JSON` write for it."""
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


def _shared_texts_general(shared: dict, variant: dict) -> tuple[list[str], list[str]]:
    """`_shared_texts` for any inputs: canonicalised first (non-NFC or colliding keys, subclasses)."""
    base = _canonical(shared, "$")
    texts, slots, text = [], [], "{"
    run: dict = {}  # shared inputs since the last per-variant one: JSON-encoded in one call
    members = 0  # written into the object so far; each after the first follows a comma
    for name in sorted({*base, *_canonical(variant, "$")}):
        if name in base:
            run[name] = base[name]
            continue
        if run:
            text += ("," if members else "") + _JSON.encode(run)[1:-1]
            members, run = members + len(run), {}
        text += ("," if members else "") + _json_text(name) + ":"
        members += 1
        texts.append(text)
        slots.append(name)
        text = ""
    if run:
        text += ("," if members else "") + _JSON.encode(run)[1:-1]
    texts.append(text + "}")
    return texts, slots
