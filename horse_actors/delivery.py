"""Delivery QC and destination masters on the actor, next to the encode, on the local file.

    encoded, clip_qc, attempts, dialogue = render_checked(job, render_encode, path, timings, gate)
    results = make_deliverables(path, job, clip_qc, store, scratch, timings)

The encoded clip is measured once (picture and sound in one decoding pass) and checked against
each destination of the job's `Delivery`. A black or frozen stretch over a destination's limit is
a picture defect no master can fix, so the take is rendered again with the next re-roll seed, at
most `max_rerolls` times. Re-roll seeds are derived from the take's seed, and the render key
covers the destinations' limits and `max_rerolls`: the same key always renders the same seeds and
delivers the same clip. When no seed passes, the best attempt is delivered (the last, for picture
defects alone), its QC failures on record. The dialogue gate (horse_actors.dialogue_gate) checks
each attempt's speech in the same loop: a wrong line is re-rolled like a black picture.

Then a master per destination (media.master: conformed to the brief's length, loudness-normalised,
re-measured and checked), each stored as its own blob. The results are plain JSON-ready dicts:
per destination {passed, checks: {name: {passed, measured, limit[, stretches]}}, master} where
master is the stored blob and how it was made, or None with a failing "master" check saying why
it could not be made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from media.master import make_masters
from media.measure import Measurements, measure
from media.qc import QCReport, check
from media.stretch import longest

from .jobs import RenderJob

from .dialogue_gate import unchecked

if TYPE_CHECKING:
    from .dialogue_gate import DialogueGate

T = TypeVar("T")
PICTURE_CHECKS = ("black", "frozen")  # defects of the rendered picture itself: a re-roll may help


def reroll_seed(seed: int, reroll: int) -> int:
    """The seed of re-roll number `reroll` (1, 2, ...) of a take rendered with `seed`."""
    digest = hashlib.sha256(f"horse-reroll:{seed}:{reroll}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class ClipQC:
    """One encoded clip, measured once and checked against each destination."""

    seed: int
    measurements: Measurements
    reports: dict[str, QCReport]

    def picture_failures(self) -> dict[str, list[str]]:
        """{destination: the black/frozen checks over its limits}, only destinations with some."""
        found = {name: [c.name for c in r.failures() if c.name in PICTURE_CHECKS] for name, r in self.reports.items()}
        return {name: checks for name, checks in found.items() if checks}

    def attempt(self) -> dict[str, Any]:
        """What the record keeps of this seed's clip."""
        m = self.measurements
        return {"seed": self.seed, "picture_passed": not self.picture_failures(),
                "black_s": round(longest(m.black), 6), "frozen_s": round(longest(m.frozen), 6),
                "picture_failures": self.picture_failures()}


def check_clip(path: str, seed: int, job: RenderJob) -> ClipQC:
    m = measure(path)
    return ClipQC(seed, m, {d.name: check(m, d, brief_seconds=job.request.seconds,
                                          expects_speech=job.delivery.expects_speech)
                            for d in job.delivery.destinations})


def render_checked(job: RenderJob, render_encode: Callable[[Any], T], path: str, timings: dict[str, float],
                   gate: "DialogueGate | None" = None) -> tuple[T, ClipQC | None, list[dict], dict | None]:
    """`render_encode(request)` renders a request and encodes it to `path`. A job with neither a
    Delivery nor a DialogueCheck is rendered once. Otherwise each clip is checked (its picture
    against the destinations, its speech by the dialogue `gate`) and re-rolled with the next seed
    while a check fails, at most `max_rerolls` times. When every attempt fails, the best one is
    delivered (its file put back at `path`): a picture that passes first, then the lowest dialogue
    error rate, then the latest. Returns (the delivered render_encode result, its ClipQC, every
    attempt's record, the delivered attempt's dialogue record)."""
    hearing = job.dialogue is not None and not job.dialogue.unchecked
    if job.delivery is None and not hearing:
        return render_encode(job.request), None, [], unchecked(job.dialogue)
    attempts: list[dict] = []
    best: tuple | None = None  # (rank, attempt index, encoded, clip_qc)
    kept = path + ".best"
    for reroll in range(max_rerolls(job) + 1):
        seed = job.request.seed if reroll == 0 else reroll_seed(job.request.seed, reroll)
        encoded = render_encode(dataclasses.replace(job.request, seed=seed))
        record: dict[str, Any] = {"seed": seed}
        clip_qc = None
        if job.delivery is not None:
            started = time.perf_counter()
            clip_qc = check_clip(path, seed, job)
            _add(timings, "qc", time.perf_counter() - started)
            record |= clip_qc.attempt()
        if hearing:
            if gate is None:
                raise ValueError("a job with a DialogueCheck needs the actor's DialogueGate")
            started = time.perf_counter()
            record["dialogue"] = gate.hear(path, job.dialogue)
            _add(timings, "dialogue", time.perf_counter() - started)
        attempts.append(record)
        rank = _rank(record, reroll)
        if _passed(record):
            best = (rank, len(attempts) - 1, encoded, clip_qc)
            break
        if best is None or rank > best[0]:
            best = (rank, len(attempts) - 1, encoded, clip_qc)
            shutil.copyfile(path, kept)  # the next attempt overwrites `path`
    _, index, encoded, clip_qc = best
    if index != len(attempts) - 1:
        shutil.copyfile(kept, path)
    if os.path.exists(kept):
        os.remove(kept)
    dialogue = attempts[index].get("dialogue")
    if dialogue is not None:
        dialogue = {**dialogue, "seed": attempts[index]["seed"], "attempts": len(attempts)}
    else:
        dialogue = unchecked(job.dialogue)
    return encoded, clip_qc, attempts, dialogue


def max_rerolls(job: RenderJob) -> int:
    """Re-rolls a take may cost: the delivery's and the dialogue check's counts (both from
    render.max_rerolls in a run, and part of the render key)."""
    return max(job.delivery.max_rerolls if job.delivery else 0, job.dialogue.max_rerolls if job.dialogue else 0)


def _passed(record: dict) -> bool:
    return record.get("picture_passed", True) and record.get("dialogue", {}).get("status") != "dialogue_failed"


def _rank(record: dict, reroll: int) -> tuple:
    """Higher is better: picture passed, dialogue passed, lower error rate (no speech worst), later."""
    dialogue = record.get("dialogue", {})
    rate = dialogue.get("error_rate")
    return (record.get("picture_passed", True), dialogue.get("status") != "dialogue_failed",
            -(rate if rate is not None else math.inf), reroll)


def make_deliverables(path: str, job: RenderJob, clip_qc: ClipQC, store, scratch: str,
                      timings: dict[str, float]) -> dict[str, dict]:
    """A master per destination of the clip at `path`, stored as blobs; the QC result per destination."""
    started = time.perf_counter()
    refused: dict[str, str] = {}
    masters = make_masters(path, job.delivery.destinations, os.path.join(scratch, "masters"),
                           brief_seconds=job.request.seconds, expects_speech=job.delivery.expects_speech,
                           source=clip_qc.measurements, refused=refused)
    results = {}
    for d in job.delivery.destinations:
        if d.name in refused:  # the clip's own checks, and why no master could be made of it
            checks = {**_checks(clip_qc.reports[d.name]), "master": {"passed": False, "measured": None,
                                                                     "limit": refused[d.name]}}
            results[d.name] = {"passed": False, "checks": checks, "master": None}
            continue
        info, report = masters[d.name]
        blob = store.put_blob(info.path, ext=d.container)  # mp4, or mov for PCM sound
        results[d.name] = {"passed": report.passed, "checks": _checks(report), "master": {
            "uri": blob.uri, "sha256": blob.sha256, "bytes": blob.bytes, "video": info.video,
            "reencode_reasons": list(info.reencode_reasons), "frames_held": info.frames_held,
            "frames_cut": info.frames_cut, "gain_db": info.gain_db, "limited_db": round(info.limited_db, 3)}}
    _add(timings, "masters", time.perf_counter() - started)
    return results


def _checks(report: QCReport) -> dict[str, dict]:
    out = {}
    for c in report.checks:
        out[c.name] = {"passed": c.passed, "measured": _plain(c.measured), "limit": c.limit}
        if c.stretches:
            out[c.name]["stretches"] = [[s.start, s.end] for s in c.stretches]
    return out


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars as Python's; an infinite level (silence's true peak) as text."""
    value = value.item() if hasattr(value, "item") else value
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def _add(timings: dict[str, float], stage: str, seconds: float) -> None:
    timings[stage] = round(timings.get(stage, 0.0) + seconds, 4)
