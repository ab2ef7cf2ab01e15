"""Store: the catalog behind one root URL (blobs, receipts, index, versions, spend, lineage, gc)."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable

from .adapters import AdapterRegistry
from .blobs import BLOB_PREFIX, BlobRef, BlobSource, BlobStore
from .gc import GCReport, collect_garbage
from .ids import InvalidId
from .index import RenderIndex
from .provider_tasks import ProviderTasks
from .qc_index import QCIndex
from .receipts import Receipts
from .root import Root
from .spend import SpendTable
from .versions import CampaignVersions, version_key

if TYPE_CHECKING:
    from .lineage import Lineage


class Store:
    """All of the catalog under one root: file://, s3://, gs://, memory:// or a plain path.
    (blobs, receipts, the render index, the delivery QC index `qc`, campaign versions, spend, brand
    `adapters`, lineage)

    storage_options are fsspec style (s3fs: key, secret, token, client_kwargs={endpoint_url,
    region_name}); the Delta tables get the same settings translated to object_store names.
    Upper-case keys (AWS_..., GOOGLE_...) go to delta-rs only. `lineage` configures the
    OpenLineage transport (default: files under lineage/ in this store).
    """

    def __init__(self, url: str | os.PathLike, storage_options: dict | None = None, *,
                 lineage: dict | None = None):
        self.root = Root(url, storage_options)
        self.blobs = BlobStore(self.root)
        self.receipts = Receipts(self.root, self._check_blob_uri)
        self.index = RenderIndex(self.root, self.receipts, self._check_blob_uri)
        self.qc = QCIndex(self.root)
        self.versions = CampaignVersions(self.root, self._check_blob_uri, self.index.version)
        self.spend = SpendTable(self.root)
        self.provider_tasks = ProviderTasks(self.root)
        self.adapters = AdapterRegistry(self.root, self.blobs)
        self._lineage_config = lineage
        self._lineage: Lineage | None = None

    @property
    def url(self) -> str:
        return self.root.url

    @property
    def lineage(self) -> Lineage:
        if self._lineage is None:
            from .lineage import Lineage  # openlineage loads only for runs that emit events (not `horse plan`)

            self._lineage = Lineage(self.root, self._lineage_config)
        return self._lineage

    def _check_blob_uri(self, field: str, uri: str) -> None:
        key = self.root.key_of(uri)
        if key is None or not key.startswith(BLOB_PREFIX + "/"):
            raise InvalidId(field, uri, f"is not a blob of this store ({self.root.url})")

    # blobs
    def put_blob(self, source: BlobSource, ext: str = "mp4") -> BlobRef:
        return self.blobs.put(source, ext)

    def open_blob(self, uri_or_sha: str, ext: str | None = None) -> BinaryIO:
        return self.blobs.open(uri_or_sha, ext)

    def blob_exists(self, sha256: str, ext: str = "mp4") -> bool:
        return self.blobs.exists(sha256, ext)

    # receipts
    def write_receipt(self, receipt: dict) -> dict:
        return self.receipts.write(receipt)

    def read_receipt(self, render_key: str) -> dict | None:
        return self.receipts.read(render_key)

    def recover_unindexed(self, render_keys: Iterable[str], run_id: str) -> dict[str, dict]:
        """Successful receipts of `render_keys` whose index commit never happened (an
        interrupted run): commit them now so they count as rendered. {render_key: receipt}."""
        receipts = self.receipts.read_ok(render_keys)
        if receipts:
            self.qc.commit(receipts.values(), run_id=run_id)
            self.index.commit(receipts.values(), run_id=run_id,
                              metadata={"operation_reason": "recover-interrupted-run"})
        return receipts

    # versions
    def version_uri(self, campaign_id: str, number: int) -> str:
        """Where the manifest of a campaign version lives."""
        return self.root.uri(version_key(campaign_id, number))

    # maintenance
    def gc(self, grace: timedelta | float = timedelta(days=7), dry_run: bool = True,
           include_receipts: bool = True) -> GCReport:
        """Delete blobs older than `grace` that no index row, version (and, by default, no
        receipt) references. Raises, deleting nothing, if any reference cannot be read."""
        references = [self.index.referenced_uris, self.qc.referenced_uris, self.versions.referenced_uris,
                      self.adapters.referenced_uris]
        if include_receipts:
            references.append(self.receipts.referenced_uris)
        return collect_garbage(self.root, references, grace=grace, dry_run=dry_run)

    def __repr__(self) -> str:
        return f"Store({self.root.url!r}, storage_options={self.root.redacted_options!r})"

    __str__ = __repr__

    def __getstate__(self) -> Any:
        raise TypeError("a Store holds credentials and is not pickled; pass url and storage options "
                        "through your secret mechanism and build a Store where it is used")
