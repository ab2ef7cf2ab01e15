"""sha256 of a local file: the one helper for content hashes of files (blobs, reference inputs)."""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike) -> tuple[str, int]:
    """(hex digest, size in bytes) of a local file, read once."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256")
        return digest.hexdigest(), f.tell()
