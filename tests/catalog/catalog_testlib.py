"""Shared builders for catalog tests (also imported by spawned worker processes)."""

from __future__ import annotations

from catalog import Store, render_key


def make_receipt(store: Store, campaign: str, shot: str, variant: str, content: bytes | None = None,
                 status: str = "ok", **extra) -> dict:
    key = render_key({"campaign": campaign, "shot": shot, "variant": variant, **extra.pop("inputs", {})})
    receipt = {"render_key": key, "campaign_id": campaign, "shot_id": shot, "variant": variant,
               "language": "en", "aspect_ratio": "16:9", "take": 1, "seed": 7, "status": status,
               "model_fingerprint": "tiny-0", "timings": {"denoise": 0.5}, "gpu_seconds": 0.5,
               "actor_id": "actor-1", "node_id": "node-1", "attempt": 1, "run_id": "run-1", **extra}
    if status in ("ok", "degraded"):
        blob = store.put_blob(content if content is not None else f"{shot}/{variant}".encode(), "mp4")
        receipt.update(blob_uri=blob.uri, sha256=blob.sha256, bytes=blob.bytes)
    else:
        receipt.update(error_class="RenderError", error_message="boom")
    return receipt


def version_entry(receipt: dict) -> dict:
    """The version entry of a receipt made by make_receipt."""
    fields = ("shot_id", "variant", "render_key", "status", "blob_uri", "sha256", "bytes", "error_class",
              "resolution", "rendered_resolution", "fallback")
    return {k: receipt[k] for k in fields if k in receipt}


def commit_worker(url: str, options: dict | None, worker: int, batches: int, per_batch: int, shared: int,
                  retries=None) -> None:
    """One of several processes committing receipts at once: its own keys plus `shared` keys
    that every worker commits too (so duplicates would show)."""
    store = Store(url, options)
    lost = 0
    for b in range(batches):
        rows = [make_receipt(store, "conc", f"w{worker}-b{b}-s{i}", "en-16x9-t1") for i in range(per_batch)]
        rows += [make_receipt(store, "conc", f"shared-{b}-{i}", "en-16x9-t1") for i in range(shared)]
        lost += store.index.commit(rows, run_id=f"worker-{worker}").retries
    if retries is not None:
        retries.put(lost)
