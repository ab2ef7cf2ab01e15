"""Content-addressed blobs: mp4s, posters, contact sheets under blobs/sha256/ab/cd/<sha256>.<ext>.

Written only if absent; the key is the content hash, so putting the same bytes twice stores
one object and concurrent writers of the same content cannot disagree. Sources are hashed
before anything is written; a source that fails while being read leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import IO, BinaryIO, Union

from .hashing import sha256_file
from .ids import InvalidId, validate_ext, validate_sha256
from .redact import get_logger
from .root import Root

log = get_logger(__name__)

BLOB_PREFIX = "blobs/sha256"
_CHUNK = 1 << 20

BlobSource = Union[bytes, bytearray, memoryview, str, os.PathLike, BinaryIO]


@dataclass(frozen=True)
class BlobRef:
    uri: str        # full URI under the store root (no credentials)
    sha256: str     # hex digest of the content
    bytes: int      # size
    created: bool   # True if this call stored the object, False if it was already there


def blob_key(sha256: str, ext: str) -> str:
    sha256 = validate_sha256(sha256)
    ext = validate_ext(ext)
    return f"{BLOB_PREFIX}/{sha256[:2]}/{sha256[2:4]}/{sha256}.{ext}"


class BlobStore:
    def __init__(self, root: Root):
        self.root = root

    def uri(self, sha256: str, ext: str = "mp4") -> str:
        return self.root.uri(blob_key(sha256, ext))

    def exists(self, sha256: str, ext: str = "mp4") -> bool:
        return self.root.exists(blob_key(sha256, ext))

    def put(self, source: BlobSource, ext: str = "mp4") -> BlobRef:
        """Store `source` (bytes, a local file path, or a binary file object) if absent."""
        ext = validate_ext(ext)
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            sha = hashlib.sha256(data).hexdigest()
            key = blob_key(sha, ext)
            created = False if self._present(key) else self.root.write_if_absent(key, data)
            return self._ref(key, sha, len(data), created)
        if isinstance(source, (str, os.PathLike)):
            return self._put_path(os.fspath(source), ext)
        if hasattr(source, "read"):
            return self._put_stream(source, ext)
        raise TypeError(f"put_blob takes bytes, a local path or a binary file object, not {type(source).__name__}")

    def _put_path(self, path: str, ext: str) -> BlobRef:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"blob source {path!r} is not a file")
        sha, size = sha256_file(path)
        key = blob_key(sha, ext)
        if self._present(key):
            return self._ref(key, sha, size, False)
        kwargs = {}
        if self.root.protocol == "s3":
            kwargs["ContentType"] = mimetypes.guess_type(f"x.{ext}")[0] or "application/octet-stream"
        created = self.root.put_file_if_absent(key, path, **kwargs)
        # The source may have changed while we copied it; the stored object must match its key.
        if created and self.root.protocol == "file":
            stored_sha, _ = sha256_file(self.root.path(key))
            if stored_sha != sha:
                self.root.delete(key)
                raise IOError(f"blob source {path!r} changed while it was being stored")
        return self._ref(key, sha, size, created)

    def _put_stream(self, stream: IO[bytes], ext: str) -> BlobRef:
        fd, tmp = tempfile.mkstemp(prefix="horse-blob-")
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(stream, out, _CHUNK)
            return self._put_path(tmp, ext)
        finally:
            os.unlink(tmp)

    def _present(self, key: str) -> bool:
        if not self.root.exists(key):
            return False
        if self.root.protocol == "file":
            # Refresh mtime: GC's grace period protects blobs that are being re-referenced now.
            try:
                os.utime(self.root.path(key))
            except OSError:
                pass
        return True

    def _ref(self, key: str, sha: str, size: int, created: bool) -> BlobRef:
        if created:
            log.debug("stored blob %s (%d bytes)", key, size)
        return BlobRef(uri=self.root.uri(key), sha256=sha, bytes=size, created=created)

    def key_from(self, uri_or_sha: str, ext: str | None = None) -> str:
        """The blob key for a sha256 (with ext) or a blob URI under this store."""
        if isinstance(uri_or_sha, str) and "/" not in uri_or_sha:
            return blob_key(uri_or_sha, ext or "mp4")
        key = self.root.key_of(uri_or_sha) if isinstance(uri_or_sha, str) else None
        if key is None or not key.startswith(BLOB_PREFIX + "/"):
            raise InvalidId("blob_uri", uri_or_sha, f"is not a blob of this store ({self.root.url})")
        name = key.rsplit("/", 1)[1]
        sha, _, got_ext = name.partition(".")
        if key != blob_key(sha, got_ext) or (ext is not None and validate_ext(ext) != got_ext):
            raise InvalidId("blob_uri", uri_or_sha, "is not a well-formed blob key")
        return key

    def open(self, uri_or_sha: str, ext: str | None = None) -> BinaryIO:
        return self.root.open_read(self.key_from(uri_or_sha, ext))
