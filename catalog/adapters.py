"""Brand adapters in the catalog: content-addressed blobs, registered by brand and version.

An adapter's weights are one blob, the single-file safetensors form whose header carries its
config (`model.adapters.Adapter.to_bytes`), so the blob's sha256 is the adapter's own address,
the hash that render keys name. Registering it writes an immutable JSON record that gives the
blob a brand and a version number and keeps its JSON config and where it came from (the
training run, the sha256 of every training clip and its encoding's blob, for lineage):

    blobs/sha256/ab/cd/<sha256>.safetensors      the adapter (written only if absent)
    adapters/<brand>/000001.json                 registration record of version 1, never changed

A manifest names an adapter as `brand` (its latest version when the run is planned) or
`brand@N`. Actors read blobs through a node-local cache folder (`fetch`), checked against the
hash on the way in, so a node downloads each adapter once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .blobs import BlobStore
from .ids import InvalidId, validate_id, validate_sha256
from .render_keys import canonical_json
from .root import Root

PREFIX = "adapters"
EXT = "safetensors"
_NAME = re.compile(r"^(?P<brand>[^@]+?)(?:@(?P<version>[0-9]+))?$")


class UnknownAdapter(ValueError):
    """A name that no registered adapter answers to."""


def record_key(brand: str, version: int) -> str:
    brand = validate_id(brand, "brand")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 10**6:
        raise InvalidId("version", version, "must be an integer from 1")
    return f"{PREFIX}/{brand}/{version:06d}.json"


def parse_name(name: object) -> tuple[str, int | None]:
    """(brand, version or None for the latest) of `brand` or `brand@N`; InvalidId otherwise."""
    m = _NAME.fullmatch(name) if isinstance(name, str) else None
    if m is None:
        raise InvalidId("adapter", name, "must be a brand id, optionally with @version (acme or acme@2)")
    version = int(m["version"]) if m["version"] else None
    if version == 0:
        raise InvalidId("adapter", name, "versions start at 1")
    return validate_id(m["brand"], "adapter"), version


class AdapterRegistry:
    """The adapters of one store root."""

    def __init__(self, root: Root, blobs: BlobStore):
        self.root, self.blobs = root, blobs

    def register(self, brand: str, data: bytes, config: dict[str, Any], *, run_id: str | None = None,
                 training: dict[str, Any] | None = None) -> dict[str, Any]:
        """Store the adapter's bytes as a blob and register it as the brand's next version; an
        adapter already registered for the brand keeps its version (a retried flow registers
        nothing twice). Returns the record."""
        brand = validate_id(brand, "brand")
        if not isinstance(config, dict):
            raise TypeError("config must be the adapter's JSON config (a dict)")
        blob = self.blobs.put(bytes(data), EXT)
        while True:
            records = self.versions(brand)
            same = next((r for r in records if r["sha256"] == blob.sha256), None)
            if same is not None:
                return same
            version = records[-1]["version"] + 1 if records else 1
            record = {"brand": brand, "version": version, "name": f"{brand}@{version}", "sha256": blob.sha256,
                      "uri": blob.uri, "bytes": blob.bytes, "config": config, "run_id": run_id,
                      "training": training, "registered_at": datetime.now(timezone.utc).isoformat()}
            if self.root.write_if_absent(record_key(brand, version), canonical_json(record) + b"\n"):
                return record
            # another writer took this version number: read again and take the next one

    def versions(self, brand: str) -> list[dict[str, Any]]:
        """Every registered version of `brand`, oldest first (empty if none)."""
        brand = validate_id(brand, "brand")
        keys = [k for k in self.root.list_files(f"{PREFIX}/{brand}") if k.endswith(".json")]
        return [json.loads(data) for _, data in sorted(self.root.read_many(keys).items())]

    def list(self) -> list[dict[str, Any]]:
        """Every registered adapter, by brand then version."""
        keys = [k for k in self.root.list_files(PREFIX) if k.endswith(".json")]
        records = [json.loads(data) for data in self.root.read_many(keys).values()]
        return sorted(records, key=lambda r: (r["brand"], r["version"]))

    def referenced_uris(self) -> set[str]:
        """Every blob a registration names: the adapter and the clip encodings it was trained on
        (stage results: GC keeps their records too). Registered adapters are never collected."""
        return {r["uri"] for r in self.list()} | self.encoding_uris()

    def encoding_uris(self) -> set[str]:
        """The training-clip encodings registered adapters name in their lineage."""
        return {c["encoding_uri"] for r in self.list() for c in (r.get("training") or {}).get("clips") or ()
                if isinstance(c, dict) and c.get("encoding_uri")}   # records before encodings name none

    def names(self) -> set[str]:
        """Every name a manifest may use: `brand` for each brand and `brand@N` for each version."""
        records = self.list()
        return {r["brand"] for r in records} | {r["name"] for r in records}

    def resolve(self, name: str) -> dict[str, Any]:
        """The record `name` means now: `brand` is its latest version. UnknownAdapter if none."""
        brand, version = parse_name(name)
        records = self.versions(brand)
        if version is not None:
            records = [r for r in records if r["version"] == version]
        if not records:
            known = ", ".join(sorted(self.names())) or "none registered"
            raise UnknownAdapter(f"unknown adapter {name!r} (known: {known})")
        return records[-1]

    def fetch(self, sha256: str, cache_dir: str | os.PathLike) -> Path:
        """A local file with the adapter's bytes: from the node's cache folder, else read from the
        store, checked against its hash and put in the cache atomically (concurrent readers on one
        node see the whole file or none)."""
        sha256 = validate_sha256(sha256, "adapter sha256")
        cache = Path(cache_dir)
        path = cache / f"{sha256}.{EXT}"
        if path.is_file():
            return path
        data = self.root.read_bytes(self.blobs.key_from(sha256, EXT))
        if hashlib.sha256(data).hexdigest() != sha256:
            raise IOError(f"adapter blob {sha256[:12]} in the store does not match its hash")
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".adapter-", dir=cache)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return path
