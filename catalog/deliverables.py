"""What a delivery ships: the approved takes of a campaign version, each as its master for one
destination, under a human name, in shot order. Selection and naming only; `flows.deliver` copies
the files and writes the manifest and the timelines.

A file is `<shot>_<language>_<aspect>_t<take>.<ext>` (`<shot>_<aspect>_t<take>.<ext>` for a shot without
a language axis), e.g. `hero_en_16x9_t2.mp4`; the extension is the master blob's (`mov` for a
destination with PCM sound). Ids are allowlisted, so names are safe as paths. A master that failed a QC
check is delivered (the take was approved with its QC in view) and its failed checks travel with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from .approvals import slot_of
from .ids import validate_ext, validate_id
from .store import Store
from .versions import VersionNotFound


class DeliveryError(ValueError):
    """Nothing can be delivered as asked; the message is one line naming what and why."""


@dataclass(frozen=True)
class Deliverable:
    name: str              # file name in the delivery folder
    shot_id: str
    variant: str
    language: str | None
    aspect: str            # "16x9"
    take: int
    render_key: str
    clip_sha256: str       # the approved clip the master was made from
    master_uri: str
    master_sha256: str
    approval: dict[str, Any]
    qc_failed: tuple[str, ...] = ()  # the master's failed QC checks: delivered as approved, never hidden

    def provenance(self) -> dict[str, Any]:
        return {"shot_id": self.shot_id, "variant": self.variant, "language": self.language, "aspect": self.aspect,
                "take": self.take, "render_key": self.render_key, "clip_sha256": self.clip_sha256,
                "master_uri": self.master_uri, "sha256": self.master_sha256,
                "approved_by": self.approval.get("who"), "approved_at": self.approval.get("at"),
                "qc_failed": list(self.qc_failed)}


def file_name(shot_id: str, language: str | None, aspect: str, take: int, ext: str = "mp4") -> str:
    return "_".join([shot_id, *([language] if language else []), aspect, f"t{take}"]) + "." + validate_ext(ext)


def approved_deliverables(store: Store, campaign_id: str, destination: str,
                          number: int | None = None) -> tuple[dict, list[Deliverable]]:
    """(the version, its approved takes' masters for `destination` in shot order), or
    DeliveryError when the version, an approval or a master is missing."""
    campaign_id = validate_id(campaign_id, "campaign_id")
    destination = validate_id(destination, "destination")
    try:
        version = store.versions.read(campaign_id, number)
    except VersionNotFound as exc:
        raise DeliveryError(str(exc)) from None
    approved = store.approved_entries(campaign_id)
    chosen = [e for e in version["entries"]
              if approved.get((e["shot_id"], e["variant"]), {}).get("render_key") == e["render_key"]]
    if not chosen:
        raise DeliveryError(f"{campaign_id} version {version['version']} has no approved takes "
                            f"(decide with horse review / horse approve)")
    order = shot_order(store, version)
    out = []
    for entry in sorted(chosen, key=lambda e: (order.get(e["shot_id"], len(order)), e["shot_id"], e["variant"])):
        label = f"{entry['shot_id']}/{entry['variant']}"
        qc = (entry.get("qc") or {}).get(destination)
        if qc is None:
            raise DeliveryError(f"{label}: no {destination} master (rendered without that destination; "
                                f"render or promote it with --destinations {destination})")
        if not qc.get("master_uri"):
            raise DeliveryError(f"{label}: {destination} refused to make a master (see horse qc {campaign_id})")
        failed = sorted(name for name, c in qc.get("checks", {}).items() if not c.get("passed"))
        slot, take, _ = slot_of(entry["variant"])
        aspect = (entry.get("aspect_ratio") or slot.rsplit("-", 1)[-1]).replace(":", "x")
        language = entry.get("language")
        out.append(Deliverable(
            name=file_name(entry["shot_id"], language, aspect, take, qc["master_uri"].rsplit(".", 1)[-1]),
            shot_id=entry["shot_id"],
            variant=entry["variant"], language=language, aspect=aspect, take=take, render_key=entry["render_key"],
            clip_sha256=entry["sha256"], master_uri=qc["master_uri"], master_sha256=qc["master_sha256"],
            approval=approved[(entry["shot_id"], entry["variant"])]["approval"],
            qc_failed=tuple(failed) if not qc.get("passed") else ()))
    names = [d.name for d in out]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:  # two approved variants of one slot and take (a preview and its promote): say which
        raise DeliveryError(f"two approved clips would be delivered as {', '.join(clash)}; "
                            "approve one take per shot/language/aspect")
    return version, out


def shot_order(store: Store, version: dict) -> dict[str, int]:
    """{shot: position} in the manifest the version was made from (shot order for editorial)."""
    uri = version.get("manifest_uri")
    if not uri:
        return {}
    with store.open_blob(uri) as f:
        shots = pq.read_table(f, columns=["shot_id"]).column("shot_id").to_pylist()
    order: dict[str, int] = {}
    for shot in shots:
        order.setdefault(shot, len(order))
    return order
