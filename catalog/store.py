"""Store: the catalog behind one root URL (blobs, stage results, receipts, index, versions, spend, lineage, gc)."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable

from .adapters import AdapterRegistry
from .approvals import Approvals
from .blobs import BLOB_PREFIX, BlobRef, BlobSource, BlobStore
from .gc import GCReport, collect_garbage
from .ids import InvalidId
from .index import RenderIndex
from .provider_tasks import ProviderTasks
from .qc_index import QCIndex
from .receipts import Receipts
from .root import Root
from .stage_results import Retention, StageResults
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
        self.stage_results = StageResults(self.root, self.blobs)
        self.receipts = Receipts(self.root, self._check_blob_uri)
        self.index = RenderIndex(self.root, self.receipts, self._check_blob_uri)
        self.qc = QCIndex(self.root)
        self.versions = CampaignVersions(self.root, self._check_blob_uri, self.index.version)
        self.spend = SpendTable(self.root)
        self.provider_tasks = ProviderTasks(self.root)
        self.adapters = AdapterRegistry(self.root, self.blobs)
        self.approvals = Approvals(self.root)
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

    # approvals
    def approved_entries(self, campaign_id: str) -> dict[tuple[str, str], dict]:
        """{(shot, variant): the version entry approved for its slot, with an `approval` field}
        for every slot whose newest decision is an approval: what reruns keep and what delivery
        ships. The entry is the one of the version the approval was made on."""
        out: dict[tuple[str, str], dict] = {}
        versions: dict[int, dict] = {}
        for state in self.approvals.state(campaign_id).values():
            event = state.approved
            if event is None:
                continue
            number = event["campaign_version"]
            if number not in versions:
                versions[number] = self.versions.read(campaign_id, number)
            entry = next((e for e in versions[number]["entries"] if e["shot_id"] == event["shot_id"]
                          and e["variant"] == event["variant"] and e["render_key"] == event["render_key"]), None)
            if entry is None:  # the table and the versions disagree: never guess which clip was meant
                raise LookupError(f"approval {event['event_id']} names {event['shot_id']}/{event['variant']} "
                                  f"{event['render_key'][:12]}, which {campaign_id} version {number} does not list")
            out[(event["shot_id"], event["variant"])] = {**entry, "approval": approval_field(event)}
        return out

    def approved_uris(self) -> dict[str, str]:
        """{URI: field} of every file an approved take stands on: the clip of every approval
        ever made, and the poster, masters and preview latent of the approved entries now."""
        uris = {uri: "approved clip" for uri in self.approvals.referenced_uris()}
        for campaign_id in sorted({e["campaign_id"] for e in self.approvals.events()}):
            for entry in self.approved_entries(campaign_id).values():
                named = {"poster_uri": entry.get("poster_uri"),
                         "stage_result_uri": (entry.get("promoted_from") or {}).get("stage_result_uri")}
                named |= {f"master_uri {d}": q.get("master_uri") for d, q in (entry.get("qc") or {}).items()}
                uris |= {uri: field for field, uri in named.items() if uri}
        return uris

    # maintenance
    def gc(self, grace: timedelta | float = timedelta(days=7), dry_run: bool = True,
           include_receipts: bool = True, retention: Retention = Retention(),
           now: datetime | None = None) -> GCReport:
        """Delete blobs older than `grace` that no index row, QC row (masters), version, approval, stage result record within
        its `retention` (and, by default, no receipt) references; unless `dry_run`, stage result
        records past their retention are deleted first (`now`: the time GC judges ages by).
        Raises, deleting nothing, if any reference cannot be read."""
        in_versions = self.versions.referenced()  # every reference is read before anything is deleted
        in_versions |= {uri: field for uri, field in self.approved_uris().items() if uri not in in_versions}
        masters = self.qc.referenced_uris()
        adapters = self.adapters.referenced_uris()
        referenced = [set(in_versions), self.index.referenced_uris(), masters, adapters]
        if include_receipts:
            referenced.append(self.receipts.referenced_uris())
        # stage results a version or a registered adapter (its training encodings) names never expire
        kept_stages, expired = self.stage_results.expire(retention, set(in_versions) | adapters, dry_run, now)
        named_as = {**in_versions, **dict.fromkeys(masters, "master_uri")}  # for the report's kinds
        references = [lambda uris=uris: uris for uris in [*referenced, kept_stages]]
        report = collect_garbage(self.root, references, grace=grace, dry_run=dry_run, now=now, named_as=named_as)
        report.expired_stage_results = sorted(r.stage_key for r in expired)
        return report

    def __repr__(self) -> str:
        return f"Store({self.root.url!r}, storage_options={self.root.redacted_options!r})"

    __str__ = __repr__

    def __getstate__(self) -> Any:
        raise TypeError("a Store holds credentials and is not pickled; pass url and storage options "
                        "through your secret mechanism and build a Store where it is used")


def approval_field(event: dict) -> dict:
    """What a version entry says about its approval."""
    return {"decision": event["decision"], "who": event["who"], "at": event["at"].isoformat().replace("+00:00", "Z"),
            "take": event["take"], "note": event["note"], "event_id": event["event_id"]}
