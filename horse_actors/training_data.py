"""Brand clips encoded for training, stored in the catalog as stage results.

A clip's encoding (video latents, audio latents, caption embedding: `model.adapter_training.
encode_clip`) is one safetensors blob, recorded as a stage result (`catalog.stage_results`, stage
"encoding") under the hash of `encoding_key_inputs`: the clip's sha256, its caption, the size and
rate it is read at and the three encoders' fingerprints. A second training run on the same clips
-- a rerun, a resumed run, a run on another node, a run of another DiT on the same encoders --
reads the encodings back and neither decodes a clip nor calls an encoder.

Retention: an encoding is a stage result with "retry" retention (GC's `retry_hours`) unless a
registered adapter names it in its training lineage; then GC keeps the record and its blob as
long as the registration (`catalog.adapters.AdapterRegistry.referenced_uris`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from catalog import Store, render_key
from catalog.stage_results import EXT, RETRY, StageRecord

STAGE = "encoding"
MAX_FRAMES = 121          # the longest clip read for training (frames, 4k+1)


@dataclass(frozen=True)
class ClipToEncode:
    path: Path            # a local file to read when the encoding is not stored yet
    sha256: str           # the clip's content hash (its blob in the catalog)
    caption: str


def encoding_keys(pipe, clips: Sequence[ClipToEncode], width: int, height: int) -> list[str]:
    from model.adapter_training import encoding_key_inputs

    return [render_key(encoding_key_inputs(c.sha256, c.caption, width, height, pipe.config.fps, MAX_FRAMES,
                                           pipe.stage_fingerprints)) for c in clips]


def stored_encodings(store: Store, pipe, clips: Sequence[ClipToEncode], width: int, height: int,
                     made_by: dict | None = None) -> list[StageRecord]:
    """The stage result record of each clip's encoding, in clip order: read from the catalog
    where one is stored (and its blob is still there), otherwise read, encoded and stored now.
    A clip that cannot be read raises media.clips.ClipError (nothing of it is stored)."""
    from media.clips import read_training_clip
    from model.adapter_training import BrandClip, encode_clip, encoding_to_bytes

    keys = encoding_keys(pipe, clips, width, height)
    found = store.stage_results.existing(keys)
    records = []
    for clip, key in zip(clips, keys):
        record = found.get(key)
        if record is None or not store.root.exists(store.blobs.key_from(record.blob_uri, EXT)):
            read = read_training_clip(clip.path, width, height, pipe.config.fps, MAX_FRAMES)
            encoding = encode_clip(pipe, BrandClip(read.frames, read.audio, read.sample_rate, clip.caption))
            record = store.stage_results.put(key, STAGE, encoding_to_bytes(encoding), retention=RETRY,
                                             made_by={**(made_by or {}), "clip_sha256": clip.sha256})
        records.append(record)
    return records


def load_encoding(store: Store, uri: str):
    """The tensors of a stored encoding (a worker reads them by URI, from any node)."""
    from model.adapter_training import encoding_from_bytes

    with store.open_blob(uri, EXT) as f:
        return encoding_from_bytes(f.read())
