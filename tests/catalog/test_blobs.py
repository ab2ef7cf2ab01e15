import hashlib
import io

import pytest

from catalog import BlobRef


def _blob_objects(store):
    return store.root.list_files("blobs")


def test_same_content_twice_stores_one_object(store, tmp_path):
    first = store.put_blob(b"fake mp4 bytes", "mp4")
    src = tmp_path / "clip.mp4"
    src.write_bytes(b"fake mp4 bytes")
    second = store.put_blob(str(src), "mp4")
    third = store.put_blob(io.BytesIO(b"fake mp4 bytes"), "mp4")
    assert isinstance(first, BlobRef) and first.created
    assert not second.created and not third.created
    assert first.uri == second.uri == third.uri
    assert first.sha256 == hashlib.sha256(b"fake mp4 bytes").hexdigest() and first.bytes == 14
    assert _blob_objects(store) == [f"blobs/sha256/{first.sha256[:2]}/{first.sha256[2:4]}/{first.sha256}.mp4"]
    assert store.blob_exists(first.sha256, "mp4") and not store.blob_exists(first.sha256, "jpg")
    with store.open_blob(first.uri) as f:
        assert f.read() == b"fake mp4 bytes"
    with store.open_blob(first.sha256, "mp4") as f:
        assert f.read() == b"fake mp4 bytes"
    poster = store.put_blob(b"jpeg", "jpg")
    assert poster.uri.endswith(".jpg")


class Exploding(io.RawIOBase):
    """A source that fails half way through (a crashed encoder, a dropped network read)."""

    def __init__(self, good: int):
        self.left = good

    def readable(self):
        return True

    def readinto(self, buf):
        if self.left <= 0:
            raise OSError("source died mid-write")
        n = min(len(buf), self.left)
        buf[:n] = b"x" * n
        self.left -= n
        return n


def test_exception_mid_write_leaves_nothing(store, tmp_path):
    with pytest.raises(OSError, match="mid-write"):
        store.put_blob(io.BufferedReader(Exploding(3 << 20)), "mp4")
    assert _blob_objects(store) == []
    assert store.root.list_files("") == []
    if store.root.protocol == "s3":
        bucket = store.root.base.split("/")[0]
        uploads = store.root.fs.call_s3("list_multipart_uploads", Bucket=bucket)
        assert not uploads.get("Uploads")


def test_local_write_failure_after_temp_leaves_no_partial(tmp_path, monkeypatch):
    """The local writer fails between the temp file and the link: no temp, no final file."""
    import os

    from catalog import Store

    store = Store(tmp_path / "root")

    def broken_link(src, dst):
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "link", broken_link)
    with pytest.raises(OSError, match="disk vanished"):
        store.put_blob(b"y" * 1000, "mp4")
    leftovers = [p for p in (tmp_path / "root").rglob("*") if p.is_file()]
    assert leftovers == []


def test_memory_backend_roundtrip():
    import uuid

    from catalog import Store

    store = Store(f"memory://horse-{uuid.uuid4().hex[:8]}")
    ref = store.put_blob(b"in memory", "mp4")
    assert ref.uri.startswith("memory:///horse-") and not store.put_blob(b"in memory").created
    assert store.open_blob(ref.uri).read() == b"in memory"


def test_sha256_file_is_the_digest_and_size(tmp_path):
    from catalog import sha256_file

    data = bytes(range(256)) * 5000  # more than one read buffer
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    assert sha256_file(path) == (hashlib.sha256(data).hexdigest(), len(data))
