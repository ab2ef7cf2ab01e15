"""One store root on any fsspec URL: key -> path/URI mapping, write-if-absent, option translation.

fsspec (s3fs, gcsfs) and delta-rs (object_store) name the same settings differently; the
caller gives one set of storage options (fsspec style, optionally with upper-case object_store
keys such as AWS_S3_ALLOW_UNSAFE_RENAME that go to delta-rs only) and this module derives both.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import functools
import shutil
import tempfile
import uuid
from typing import Any, BinaryIO, Callable, Iterable, TypeVar
from urllib.parse import urlsplit

import fsspec

from .ids import InvalidId, safe_key
from .outage import wait_out_outage
from .redact import (SECRET_FILTER, env_secret_values, get_logger, guard_third_party_loggers, redact_options, redact_url,
                     secret_values)

log = get_logger(__name__)
T = TypeVar("T")

PROTOCOLS = {"file": "file", "local": "file", "s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "memory": "memory"}


def fsspec_options(protocol: str, options: dict) -> dict:
    """fsspec keyword arguments: the options without object_store-only (upper-case) keys."""
    return {k: v for k, v in options.items() if not (isinstance(k, str) and k.isupper())}


def delta_options(protocol: str, options: dict) -> dict[str, str]:
    """object_store (delta-rs) storage options derived from fsspec-style ones."""
    out: dict[str, str] = {}
    client = options.get("client_kwargs") or {}
    if protocol == "s3":
        pairs = {
            "AWS_ACCESS_KEY_ID": options.get("key") or client.get("aws_access_key_id"),
            "AWS_SECRET_ACCESS_KEY": options.get("secret") or client.get("aws_secret_access_key"),
            "AWS_SESSION_TOKEN": options.get("token") or client.get("aws_session_token"),
            "AWS_ENDPOINT_URL": options.get("endpoint_url") or client.get("endpoint_url"),
            "AWS_REGION": client.get("region_name") or options.get("region_name"),
        }
        out.update({k: str(v) for k, v in pairs.items() if v})
        if options.get("anon"):
            out["AWS_SKIP_SIGNATURE"] = "true"
        endpoint = out.get("AWS_ENDPOINT_URL", "")
        if endpoint.startswith("http://"):
            out["AWS_ALLOW_HTTP"] = "true"
        if endpoint and "AWS_REGION" not in out:
            out["AWS_REGION"] = "us-east-1"
        retries = _object_store_retries((options.get("config_kwargs") or {}).get("retries") or {})
        if retries is not None:
            out["max_retries"] = str(retries)
    elif protocol == "gs":
        token = options.get("token")
        if isinstance(token, dict):
            out["GOOGLE_SERVICE_ACCOUNT_KEY"] = json.dumps(token)
        elif isinstance(token, str) and token not in ("anon", "google_default", "cloud", "browser", "cache"):
            out["GOOGLE_SERVICE_ACCOUNT"] = token
        if options.get("endpoint_url"):
            out["GOOGLE_BASE_URL"] = str(options["endpoint_url"])
    out.update({k: str(v) for k, v in options.items() if isinstance(k, str) and k.isupper()})
    return out


def _object_store_retries(botocore_retries: dict) -> int | None:
    """object_store's `max_retries` (retries after the first try) for botocore's retry settings:
    `total_max_attempts` counts the first try and wins over `max_attempts`, which (in client
    config) counts only the retries."""
    if botocore_retries.get("total_max_attempts") is not None:
        return max(int(botocore_retries["total_max_attempts"]) - 1, 0)
    if botocore_retries.get("max_attempts") is not None:
        return max(int(botocore_retries["max_attempts"]), 0)
    return None


def _waits_out_outages(method):
    """Root I/O methods wait out an unreachable store (see outage.py)."""
    @functools.wraps(method)
    def wrapper(self: "Root", *args, **kwargs):
        return self.retrying(method.__name__, lambda: method(self, *args, **kwargs))

    return wrapper


class Root:
    """A store root: one URL, one filesystem, relative keys below it."""

    def __init__(self, url: str | os.PathLike, storage_options: dict | None = None):
        url = os.fspath(url)
        if not isinstance(url, str) or not url or "\x00" in url:
            raise ValueError("store url must be a non-empty string")
        options = dict(storage_options or {})
        if "://" in url:
            parts = urlsplit(url)
            if "@" in parts.netloc or parts.query or parts.fragment:
                raise ValueError(
                    f"store url {redact_url(url)!r} must not carry credentials, a query or a fragment; "
                    "pass credentials in storage_options"
                )
            scheme = parts.scheme.lower()
            if scheme not in PROTOCOLS:
                raise ValueError(f"store url scheme {scheme!r} is not supported (file, s3, gs, memory)")
            self.protocol = PROTOCOLS[scheme]
            rest = url.split("://", 1)[1]
        else:
            self.protocol, rest = "file", url
        if self.protocol == "file":
            base = os.path.abspath(os.path.expanduser(rest if rest else "."))
            self.base = base.rstrip("/") or "/"
            self.url = "file://" + self.base
        elif self.protocol == "memory":
            self.base = "/" + rest.strip("/")
            self.url = "memory://" + self.base
        else:
            self.base = rest.strip("/")
            if not self.base:
                raise ValueError(f"store url {url!r} needs a bucket")
            self.url = f"{self.protocol}://{self.base}"
        if any(seg in ("..", ".") for seg in self.base.split("/")):
            raise ValueError(f"store url {redact_url(url)!r} must not contain '.' or '..' segments")
        self._options = options
        SECRET_FILTER.register(secret_values(options) | env_secret_values())
        guard_third_party_loggers()
        # The filesystem gets its own copy: botocore rewrites the retry settings it is given in
        # place (max_attempts -> total_max_attempts, plus a mode), which must change neither what
        # this store reports and hands to other processes nor the caller's settings.
        self.fs = fsspec.filesystem(self.protocol, **copy.deepcopy(fsspec_options(self.protocol, options)))
        self._delta_options = delta_options(self.protocol, options)
        self._memory_delta_dir: str | None = None

    # -- naming -------------------------------------------------------------------------------
    def path(self, key: str) -> str:
        """Filesystem path (as the fsspec filesystem sees it) of a relative key."""
        key = safe_key(key)
        path = f"{self.base.rstrip('/')}/{key}"
        if self.protocol == "file":
            real_root = os.path.realpath(self.base)
            real = os.path.realpath(path)
            if os.path.commonpath([real_root, real]) != real_root:
                raise InvalidId("key", key, "resolves outside the store root")
        return path

    def uri(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{safe_key(key)}"

    def key_of(self, uri_or_path: str) -> str | None:
        """The relative key of a URI (or fs path) under this root, or None if it is elsewhere."""
        prefix_url = self.url.rstrip("/") + "/"
        prefix_path = self.base.rstrip("/") + "/"
        if uri_or_path.startswith(prefix_url):
            rel = uri_or_path[len(prefix_url):]
        elif self.protocol == "file" and uri_or_path.startswith(prefix_path):
            rel = uri_or_path[len(prefix_path):]
        elif self.protocol != "file" and uri_or_path.startswith(prefix_path) and "://" not in uri_or_path:
            rel = uri_or_path[len(prefix_path):]
        else:
            return None
        try:
            return safe_key(rel)
        except InvalidId:
            return None

    def delta_uri(self, key: str) -> str:
        """Where delta-rs finds a table. memory:// tables live in a per-process temp directory
        because delta-rs's in-memory store is not shared between table handles."""
        key = safe_key(key)
        if self.protocol == "file":
            return self.path(key)
        if self.protocol == "memory":
            if self._memory_delta_dir is None:
                digest = hashlib.sha256(self.base.encode()).hexdigest()[:16]
                self._memory_delta_dir = os.path.join(
                    tempfile.gettempdir(), f"horse-catalog-memory-{os.getpid()}", digest
                )
            return os.path.join(self._memory_delta_dir, key)
        return self.uri(key)

    @property
    def delta_storage_options(self) -> dict[str, str]:
        return dict(self._delta_options)

    @property
    def redacted_options(self) -> dict:
        return redact_options(self._options)

    # -- io -----------------------------------------------------------------------------------
    def retrying(self, what: str, call: Callable[[], T]) -> T:
        """`call()`, waiting out an unreachable object store (local roots fail at once)."""
        if self.protocol in ("file", "memory"):
            return call()
        return wait_out_outage(call, what, self.url)

    @_waits_out_outages
    def exists(self, key: str) -> bool:
        path = self.path(key)
        self.fs.invalidate_cache(path)  # another process may have written it since we listed
        return self.fs.exists(path)

    @_waits_out_outages
    def read_bytes(self, key: str) -> bytes:
        return self.fs.cat_file(self.path(key))

    def read_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """Read many small objects at once (concurrent on async filesystems such as s3fs).
        A key that does not exist is left out; any other error is raised, never left out."""
        paths = {self.path(k): k for k in keys}
        return self.retrying("read_many", lambda: self._read_paths(paths)) if paths else {}

    def _read_paths(self, paths: dict[str, str]) -> dict[str, bytes]:
        out = {}
        for path, value in self.fs.cat(list(paths), on_error="return").items():
            if isinstance(value, FileNotFoundError):
                continue
            if isinstance(value, BaseException):
                raise value
            out[paths[path]] = value
        return out

    @_waits_out_outages
    def open_read(self, key: str) -> BinaryIO:
        return self.fs.open(self.path(key), "rb")

    @_waits_out_outages
    def list_files(self, prefix: str, detail: bool = False):
        """Files under a key prefix: {key: info} (detail) or sorted keys. Missing prefix -> empty."""
        base = self.path(prefix) if prefix else self.base
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            found = {}
        out = {}
        root = self.base.rstrip("/") + "/"
        for path, info in found.items():
            if info.get("type", "file") != "file":
                continue
            path = self.fs._strip_protocol(path) if "://" in path else path
            if self.protocol == "memory" and not path.startswith("/"):
                path = "/" + path
            if path.startswith(root):
                out[path[len(root):]] = info
        return out if detail else sorted(out)

    def write_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` with `data` unless it exists. True if this call created it.

        Local: temp file in the target directory, fsync, then hard link to the final name
        (link never replaces), so readers see nothing or the whole file. Object stores: one
        PUT with If-None-Match: * (visible only when complete).
        """
        return self._create(key, lambda f: f.write(data), lambda path: self.fs.pipe_file(path, data, mode="create"))

    def put_file_if_absent(self, key: str, local_path: str, **put_kwargs: Any) -> bool:
        """Like write_if_absent, from a local file (object stores: put_file, aborted on error)."""
        def copy(dst):
            with open(local_path, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)

        return self._create(key, copy, lambda path: self.fs.put_file(local_path, path, mode="create", **put_kwargs))

    @_waits_out_outages
    def _create(self, key: str, write_local, create_remote) -> bool:
        path = self.path(key)
        try:
            if self.protocol == "file":
                _local_publish(path, write_local, replace=False)
            else:
                create_remote(path)
            return True
        except FileExistsError:
            return False

    @_waits_out_outages
    def write_replace(self, key: str, data: bytes) -> None:
        """Create or replace `key` atomically (readers see the old or the new bytes, never a part)."""
        path = self.path(key)
        if self.protocol == "file":
            _local_publish(path, lambda f: f.write(data), replace=True)
        else:
            self.fs.pipe_file(path, data)

    @_waits_out_outages
    def delete(self, key: str) -> None:
        self.fs.rm_file(self.path(key))

    def __repr__(self) -> str:
        return f"Root({self.url!r}, storage_options={self.redacted_options!r})"


def _local_publish(path: str, write, replace: bool) -> None:
    """Write through a temp file in the target directory, then link (no replace: raises
    FileExistsError if `path` exists) or rename over it (replace)."""
    directory = os.path.dirname(path)
    tmp = local_temp_in(directory)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
        _fsync_dir(directory)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def local_temp_in(directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, f".tmp-{uuid.uuid4().hex}")


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
