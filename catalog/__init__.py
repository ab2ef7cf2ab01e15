"""Horse catalog: versioned storage with lineage for rendered clips (no torch, Ray or Prefect).

    from catalog import Store, validate_id, InvalidId, render_key

Names are imported on first use: id validation and render keys (manifest tools, light CLI
commands) load without deltalake, fsspec or openlineage.
"""

from importlib import import_module

_EXPORTS = {
    "AdapterRegistry": "adapters", "UnknownAdapter": "adapters",
    "Approvals": "approvals", "InvalidDecision": "approvals", "decision_event": "approvals",
    "review_slots": "approvals", "slot_of": "approvals",
    "BlobRef": "blobs", "blob_key": "blobs",
    "GCReport": "gc",
    "sha256_file": "hashing",
    "ID_PATTERN": "ids", "InvalidId": "ids", "safe_key": "ids", "validate_ext": "ids", "validate_id": "ids",
    "validate_sha256": "ids",
    "CommitResult": "index", "RenderIndex": "index",
    "canonical_json": "render_keys", "render_key": "render_keys",
    "render_key_grid": "render_keys",
    "QCIndex": "qc_index",
    "Lineage": "lineage", "LineageInput": "lineage", "parse_event": "lineage",
    "ProviderTasks": "provider_tasks",
    "receipt_key": "receipts",
    "public_options": "redact", "redact_options": "redact", "redact_url": "redact",
    "Retention": "stage_results", "StageRecord": "stage_results", "StageResults": "stage_results",
    "SpendTable": "spend",
    "Store": "store",
    "CampaignVersions": "versions", "VersionInfo": "versions", "VersionNotFound": "versions",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'catalog' has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
