"""Horse catalog: versioned storage with lineage for rendered clips (no torch, Ray or Prefect).

    from catalog import Store, validate_id, InvalidId, render_key
"""

from .blobs import BlobRef, blob_key
from .gc import GCReport
from .ids import ID_PATTERN, InvalidId, safe_key, validate_ext, validate_id, validate_sha256
from .index import CommitResult, RenderIndex
from .keys import canonical_json, render_key
from .lineage import Lineage, LineageInput, parse_event
from .receipts import receipt_key
from .redact import public_options, redact_options, redact_url
from .store import Store
from .versions import CampaignVersions, VersionInfo, VersionNotFound

__all__ = [
    "Store", "validate_id", "InvalidId", "render_key", "canonical_json", "BlobRef", "blob_key",
    "validate_sha256", "validate_ext", "safe_key", "ID_PATTERN", "CommitResult", "RenderIndex",
    "CampaignVersions", "VersionInfo", "VersionNotFound", "Lineage", "LineageInput", "parse_event",
    "GCReport", "receipt_key", "public_options", "redact_options", "redact_url",
]
