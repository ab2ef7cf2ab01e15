"""Id validation and safe key building.

Ids come from manifests written by people; they become parts of object keys. Everything that
reaches a key passes through here: ids against an allowlist, hashes as lowercase hex, and the
final key is checked segment by segment so that nothing can point outside the store root.
"""

from __future__ import annotations

import re

ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_ID_RE = re.compile(ID_PATTERN)
SHA256_PATTERN = r"^[0-9a-f]{64}$"  # RE2 (Arrow) reads it as Python does under fullmatch
_SHA256_RE = re.compile(SHA256_PATTERN)
_EXT_RE = re.compile(r"^[a-z0-9]{1,16}$")
# A plain name, a temp file of ours, or a Delta table's Hive-style partition folder (campaign_id=<id>).
_SEGMENT_RE = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9._-]{0,199}|\.tmp-[0-9a-f]{32}|[a-z_]{1,40}=[A-Za-z0-9_][A-Za-z0-9._-]{0,199})$")


class InvalidId(ValueError):
    """An id, hash or key part was refused. Names the field, the value (repr, truncated) and why."""

    def __init__(self, field: str, value: object, reason: str):
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {field} {_short_repr(value)}: {reason}")


def _short_repr(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _id_problem(value: str) -> str | None:
    if value == "":
        return "must not be empty"
    if "\x00" in value:
        return "must not contain NUL bytes"
    if "://" in value:
        return "must be a plain id, not a URI"
    if "/" in value or "\\" in value:
        return "must not contain path separators"
    if ".." in value:
        return "must not contain '..'"
    if len(value) > 64:
        return f"is {len(value)} characters long; at most 64 are allowed"
    if not value.isascii():
        return "must be ASCII (lowercase letters, digits, '.', '_', '-')"
    if _ID_RE.fullmatch(value) is None:
        return (
            f"must match {ID_PATTERN}: lowercase ASCII letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return None


def validate_id(value: object, field: str = "shot_id") -> str:
    """Return `value` if it is a safe id (campaign, shot, variant, run ...); raise InvalidId otherwise."""
    if not isinstance(value, str):
        raise InvalidId(field, value, f"must be a string, not {type(value).__name__}")
    if _ID_RE.fullmatch(value) is not None and ".." not in value:
        return value  # the common case; _id_problem explains the others
    problem = _id_problem(value)
    if problem:
        raise InvalidId(field, value, problem)
    return value


def validate_sha256(value: object, field: str = "sha256") -> str:
    """A sha256 hex digest: 64 lowercase hex characters (render keys and content hashes)."""
    if not isinstance(value, str) or _SHA256_RE.fullmatch(value) is None:
        raise InvalidId(field, value, "must be 64 lowercase hex characters (a sha256 digest)")
    return value


def validate_ext(value: object, field: str = "ext") -> str:
    """A file extension without the dot, e.g. 'mp4', 'jpg', 'png', 'json'."""
    if isinstance(value, str) and value.startswith("."):
        value = value[1:]
    if not isinstance(value, str) or _EXT_RE.fullmatch(value) is None:
        raise InvalidId(field, value, "must be 1-16 lowercase letters or digits (e.g. 'mp4')")
    return value


def safe_key(*parts: str) -> str:
    """Join key parts with '/'; each part may itself hold '/'-separated segments.

    Every segment must be a plain name (letters, digits, '.', '_', '-', not starting with a
    dot or dash; or `column=<plain name>`, a Delta partition folder), so '..', '.', empty segments, absolute paths, backslashes, NUL and
    protocols are refused. Callers build parts only from constants, validated ids and hashes;
    this is the last check before a key meets a filesystem.
    """
    segments: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise InvalidId("key part", part, "must be a string")
        for segment in part.split("/"):
            if _SEGMENT_RE.fullmatch(segment) is None or ".." in segment:
                raise InvalidId("key segment", segment, "is not a plain name")
            segments.append(segment)
    if not segments:
        raise InvalidId("key", "", "must not be empty")
    return "/".join(segments)
