"""`horse deliver`: the approved masters of a campaign version, exported for editorial.

Into `<out>/<campaign>/<destination>/` (any fsspec URL) go the masters under human names
(`catalog.deliverables`), `SHA256SUMS` (`sha256sum -c` format), `delivery.json` (each file's
provenance: render key, approved clip, who approved it and when), and per language x aspect ratio
an OpenTimelineIO timeline (`.otio`) with the clips in shot order and each clip's provenance in
its metadata, plus a CMX 3600 EDL where the adapter can write one.

A master that failed QC is delivered with its failed checks in `delivery.json`, the timeline's
metadata and the report (the command exits 1). Re-delivering is incremental: a file already there with the bytes the previous delivery listed
is not copied again. `verify` re-hashes every file the manifest lists.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import fsspec
import opentimelineio as otio

from catalog import Store
from catalog.deliverables import Deliverable, approved_deliverables
from media import probe_mp4

SUMS, RECORD = "SHA256SUMS", "delivery.json"
_CHUNK = 1 << 20


@dataclass
class DeliveryReport:
    campaign_id: str
    version: int
    destination: str
    folder: str
    copied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    timelines: list[str] = field(default_factory=list)
    edl_skipped: dict[str, str] = field(default_factory=dict)  # timeline -> why the EDL adapter refused
    verified: int | None = None
    mismatched: list[str] = field(default_factory=list)  # files missing or not matching SHA256SUMS
    qc_failed: dict[str, list[str]] = field(default_factory=dict)  # file -> its master's failed QC checks

    def as_dict(self) -> dict[str, Any]:
        return {"ok": not (self.mismatched or self.qc_failed), **self.__dict__}


def deliver(store: Store, campaign_id: str, destination: str, out: str, *, version: int | None = None,
            verify: bool = False, storage_options: dict | None = None) -> DeliveryReport:
    """Export (DeliveryError: nothing deliverable as asked; nothing is written then)."""
    body, items = approved_deliverables(store, campaign_id, destination, version)
    fs, root = fsspec.core.url_to_fs(out, **(storage_options or {}))
    folder = f"{root.rstrip('/')}/{campaign_id}/{destination}"
    fs.makedirs(folder, exist_ok=True)
    report = DeliveryReport(campaign_id, body["version"], destination, folder)
    before = _previous(fs, f"{folder}/{RECORD}")
    files = []
    report.qc_failed = {item.name: list(item.qc_failed) for item in items if item.qc_failed}
    for item in items:
        path = f"{folder}/{item.name}"
        known = before.get(item.name)
        if known and known["sha256"] == item.master_sha256 and fs.exists(path) and fs.size(path) == known["bytes"]:
            report.unchanged.append(item.name)
            files.append(known)
            continue
        files.append(_copy(store, fs, item, path))
        report.copied.append(item.name)
    for name, text in timelines(body, destination, items, files).items():
        fs.pipe(f"{folder}/{name}", text.encode())
        report.timelines.append(name)
    for name, text_or_reason in edls(body, destination, items, files).items():
        if isinstance(text_or_reason, Exception):
            report.edl_skipped[name] = str(text_or_reason).splitlines()[0][:200]
        else:
            fs.pipe(f"{folder}/{name}", text_or_reason.encode())
            report.timelines.append(name)
    fs.pipe(f"{folder}/{SUMS}", "".join(f"{f['sha256']}  {f['name']}\n" for f in files).encode())
    record = {"campaign_id": campaign_id, "version": body["version"], "destination": destination,
              "model_fingerprint": body.get("model_fingerprint"), "files": files}
    fs.pipe(f"{folder}/{RECORD}", json.dumps(record, indent=2, sort_keys=True).encode())
    if verify:
        verify_folder(fs, folder, report)
    return report


def _previous(fs, path: str) -> dict[str, dict]:
    if not fs.exists(path):
        return {}
    return {f["name"]: f for f in json.loads(fs.cat_file(path))["files"]}


def _copy(store: Store, fs, item: Deliverable, path: str) -> dict[str, Any]:
    """Copy one master through a local file (probed for its length), checking its hash on the way."""
    with tempfile.TemporaryDirectory(prefix="horse-deliver-") as tmp:
        local = os.path.join(tmp, item.name)
        digest = hashlib.sha256()
        with store.open_blob(item.master_uri) as src, open(local, "wb") as dst:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != item.master_sha256:
            raise RuntimeError(f"{item.master_uri}: stored bytes hash to {digest.hexdigest()}, "
                               f"the catalog says {item.master_sha256}")
        info = probe_mp4(local)
        fs.put_file(local, path)
    return {"name": item.name, "sha256": item.master_sha256, "bytes": info.bytes, "frames": info.frames,
            "fps": info.fps, **item.provenance()}


def _groups(items: list[Deliverable], files: list[dict]) -> dict[tuple[str | None, str], list[tuple[Deliverable, dict]]]:
    by_name = {f["name"]: f for f in files}
    groups: dict[tuple[str | None, str], list[tuple[Deliverable, dict]]] = {}
    for item in items:  # already in shot order
        groups.setdefault((item.language, item.aspect), []).append((item, by_name[item.name]))
    return groups


def _timeline(body: dict, destination: str, language: str | None, aspect: str,
              clips: list[tuple[Deliverable, dict]]) -> otio.schema.Timeline:
    title = " ".join(p for p in (body["campaign_id"], destination, language, aspect) if p)
    timeline = otio.schema.Timeline(name=title, metadata={"horse": {
        "campaign_id": body["campaign_id"], "version": body["version"], "destination": destination}})
    track = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video)
    for item, f in clips:
        duration = otio.opentime.TimeRange(otio.opentime.RationalTime(0, f["fps"]),
                                           otio.opentime.RationalTime(f["frames"], f["fps"]))
        track.append(otio.schema.Clip(
            name=os.path.splitext(item.name)[0],
            media_reference=otio.schema.ExternalReference(target_url=item.name, available_range=duration),
            source_range=duration, metadata={"horse": item.provenance()}))
    timeline.tracks.append(track)
    return timeline


def _stem(body: dict, destination: str, language: str | None, aspect: str) -> str:
    return "_".join(p for p in (body["campaign_id"], destination, language, aspect) if p)


def timelines(body: dict, destination: str, items: list[Deliverable], files: list[dict]) -> dict[str, str]:
    """{file name: .otio JSON} per language x aspect ratio."""
    return {f"{_stem(body, destination, lang, aspect)}.otio":
            otio.adapters.write_to_string(_timeline(body, destination, lang, aspect, clips), "otio_json")
            for (lang, aspect), clips in _groups(items, files).items()}


def edls(body: dict, destination: str, items: list[Deliverable], files: list[dict]) -> dict[str, str | Exception]:
    """{file name: CMX 3600 EDL, or why the adapter could not write it} per language x aspect ratio."""
    out: dict[str, str | Exception] = {}
    for (lang, aspect), clips in _groups(items, files).items():
        name = f"{_stem(body, destination, lang, aspect)}.edl"
        try:
            out[name] = otio.adapters.write_to_string(_timeline(body, destination, lang, aspect, clips), "cmx_3600")
        except Exception as exc:  # noqa: BLE001 - e.g. the adapter package is absent, or a rate EDL cannot express
            out[name] = exc
    return out


def verify_folder(fs, folder: str, report: DeliveryReport) -> None:
    """Re-hash every file SHA256SUMS lists; a missing or different file is a mismatch."""
    report.verified, report.mismatched = 0, []
    for line in fs.cat_file(f"{folder}/{SUMS}").decode().splitlines():
        want, name = line.split("  ", 1)
        path = f"{folder}/{name}"
        digest = hashlib.sha256()
        try:
            with fs.open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
        except FileNotFoundError:
            report.mismatched.append(f"{name}: missing")
            continue
        if digest.hexdigest() != want:
            report.mismatched.append(f"{name}: sha256 {digest.hexdigest()[:12]}, manifest {want[:12]}")
        report.verified += 1
