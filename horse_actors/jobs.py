"""What goes into the pool (RenderJob), what comes out (RenderOutcome), and how failures are classed.

An outcome is a small record: frames and audio stay on the actor's node; only the blob's URI,
checksum and a few numbers travel back through Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from media.dialogue import Thresholds
    from media.qc import Destination

OK, FAILED, CANCELLED = "ok", "failed", "cancelled"
# Rendered and stored, but not as requested (an OOM fallback lowered the resolution): the clip
# is real and its file is in the store, yet it is not the deliverable the render key names.
DEGRADED = "degraded"

# Error classes the pool acts on; anything else keeps the exception's own class name.
INVALID_REQUEST = "InvalidRequest"      # never retried: rendering it again cannot help
GPU_OOM = "GpuOutOfMemory"              # the actor already walked the fallback ladder
ACTOR_DIED = "ActorDied"                # process crashed or was killed: restart the actor, retry
DEADLINE_EXCEEDED = "DeadlineExceeded"  # hung past its deadline: kill the actor, retry
CANCELLED_CLASS = "Cancelled"
NOT_ADMITTED = "NotAdmitted"            # never dispatched: the run stopped taking new jobs (a budget)
NO_ACTORS = "NoActors"                  # every actor slot used up its restarts

# The pipeline's stages in RenderOutcome.timings: the seconds the accelerator is busy with a job.
MODEL_STAGES = ("text_encode", "denoise", "sr", "decode")

# Text of CUDA errors that leave the context unusable; the actor must exit (DESIGN §4).
_STICKY_CUDA = (
    "illegal memory access",
    "device-side assert",
    "unspecified launch failure",
    "misaligned address",
    "CUBLAS_STATUS_EXECUTION_FAILED",
    "uncorrectable ECC error",
)


@dataclass(frozen=True)
class Delivery:
    """Where a job's clip is going. The actor measures the encoded clip, checks it against each
    destination, re-renders it with the next seed while its picture has a black or frozen stretch
    over a destination's limit (at most `max_rerolls` times), and makes a master per destination.
    Destinations are plain data (media.qc.Destination): they pickle."""

    destinations: tuple["Destination", ...]
    max_rerolls: int = 0
    expects_speech: bool = False  # the brief has dialogue: long silences fail QC


@dataclass(frozen=True)
class DialogueCheck:
    """What the clip must say (horse_actors.dialogue_gate): the brief's lines in `language`, the
    must-say terms, the limits. A clip that fails is rendered again with the next seed, at most
    `max_rerolls` times (the same re-roll loop as picture defects); when none passes, the best
    attempt is delivered marked dialogue_failed. `unchecked`: why this clip's speech cannot be
    checked (no recogniser for its language): the gate records that instead of a pass."""

    language: str
    lines: tuple[str, ...]
    thresholds: "Thresholds"
    must_say: tuple[str, ...] = ()
    max_rerolls: int = 0
    unchecked: str | None = None


@dataclass(frozen=True)
class RenderJob:
    """One variant of one shot. `metadata` become mp4 tags (provenance tags are added by the actor)."""

    render_key: str
    request: Any  # model.RenderRequest
    campaign_id: str
    shot_id: str
    variant: str
    metadata: dict[str, str] = field(default_factory=dict)
    deadline_s: float | None = None  # overrides PoolConfig.job_deadline_s for this job
    # how long the catalog keeps this job's stage results: "preview" (promotable) or "retry"
    stage_retention: str = "retry"
    priority: tuple[int, ...] = ()   # higher dispatches first (compared item by item); equals keep input order
    delivery: Delivery | None = None  # None: no delivery QC, no masters
    dialogue: DialogueCheck | None = None  # None: no line to check
    # Brand adapter: the sha256 of its catalog blob (model.adapters.Adapter.sha256) and its
    # strength; the actor applies it on its resident model. None: the base model.
    adapter_sha256: str | None = None
    adapter_strength: float = 1.0


@dataclass
class RenderOutcome:
    render_key: str
    status: str  # "ok" | "degraded" | "failed" | "cancelled"
    error_class: str | None = None
    error_message: str | None = None
    retryable: bool = False
    blob_uri: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    poster_uri: str | None = None
    # seconds per stage: queue, text_encode, denoise, sr, decode, encode, upload
    timings: dict[str, float] = field(default_factory=dict)
    # device seconds per cost stage (stage_device_seconds) and what they were spent on:
    # "cpu" or the GPU's name as torch reports it ("NVIDIA H100 80GB HBM3")
    device_seconds: dict[str, float] = field(default_factory=dict)
    device_type: str | None = None
    actor_id: str | None = None
    node_id: str | None = None
    gpu_ids: list[str] = field(default_factory=list)
    attempt: int = 1
    duration_s: float | None = None  # wall time inside the actor for this attempt
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    audio_seconds: float | None = None
    pid: int | None = None
    model_fingerprint: str | None = None
    rendered_resolution: str | None = None  # what the clip was rendered at (differs from the request when degraded)
    fallback: list[str] = field(default_factory=list)  # OOM ladder rungs the clip was rendered with, in order
    # one {attempt, error_class, error_message, actor_id, stages_run} per earlier failed attempt of this job
    earlier_attempts: list[dict] = field(default_factory=list)
    # staged renders (horse_actors.staged): stages started per try ("1", "1+tiled_decode", "2": [...]),
    # the stored stage the delivering try started from, and {stage: {stage_key, uri, sha256, bytes}}
    # of the stored results the clip was made from
    stages_run: dict[str, list[str]] = field(default_factory=dict)
    resumed_from: str | None = None
    stage_results: dict[str, dict] = field(default_factory=dict)
    # Delivery QC (jobs with a Delivery): per destination {passed, checks, master | refused}
    # (horse_actors.delivery); the QC of every seed rendered (the take's, then re-rolls); the
    # seed of the delivered clip.
    qc: dict[str, dict] | None = None
    qc_attempts: list[dict] = field(default_factory=list)
    rendered_seed: int | None = None
    # Dialogue gate (jobs with a DialogueCheck): the delivered clip's result {status, reason,
    # transcript, error_rate, ...}; every attempt's is in qc_attempts[i]["dialogue"].
    dialogue: dict | None = None
    # The actor's accelerator use when this outcome was made (RenderActor.accelerator): the model's
    # busy seconds and the wall seconds since the actor's first job, both over its life so far.
    accelerator: dict | None = None

    @property
    def dialogue_status(self) -> str | None:
        """"passed", "dialogue_failed" (no re-roll passed: the best is delivered), "unchecked" (the
        clip has a line no recogniser could check), None without a line."""
        return None if self.dialogue is None else self.dialogue["status"]

    @property
    def qc_status(self) -> str | None:
        """"passed" when the clip passed every destination, "failed" if not, None without QC."""
        if self.qc is None:
            return None
        return "passed" if all(d["passed"] for d in self.qc.values()) else "failed"

    @property
    def ok(self) -> bool:
        """Rendered exactly as requested (a degraded clip is not ok)."""
        return self.status == OK


def sorted_stages_run(*parts: dict[str, list[str]]) -> dict[str, list[str]]:
    """Stages started per try, merged (stages of one try in the order they ran) and ordered by
    attempt, then by how many ladder rungs the try used ("1" < "1+tiled_decode" < "2")."""
    merged: dict[str, list[str]] = {}
    for part in parts:
        for label, stages in (part or {}).items():
            merged.setdefault(label, [])
            merged[label] += [s for s in stages if s not in merged[label]]

    def order(label: str):
        head, *rungs = label.split("+")
        return (int(head) if head.isdigit() else 0, len(rungs), label)

    return {label: merged[label] for label in sorted(merged, key=order)}


def stage_device_seconds(timings: dict[str, float], resolution: str) -> dict[str, float]:
    """Device seconds per cost stage of one render (flows.cost) from its stage timings: `base`
    (text encoding and the denoising loop, at 256p), `sr_540p` or `sr_1080p`, `decode`,
    `encode` and, where it ran, `qc` (delivery QC and the masters: they hold the actor too). The
    model syncs the device at the end of each stage, so these are device time; a stage the render
    did not run (a promote has no base) is left out."""
    stages = {"base": timings.get("text_encode", 0.0) + timings.get("denoise", 0.0),
              f"sr_{resolution}": timings.get("sr", 0.0), "decode": timings.get("decode", 0.0),
              "encode": timings.get("encode", 0.0), "qc": timings.get("qc", 0.0) + timings.get("masters", 0.0)}
    return {stage: round(seconds, 4) for stage, seconds in stages.items() if seconds > 0}


def is_oom(exc: BaseException) -> bool:
    """GPU out-of-memory raised by torch (the typed error, or the older RuntimeError text)."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def is_sticky_cuda(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(s in text for s in _STICKY_CUDA)


def is_invalid_request(exc: BaseException) -> bool:
    """Errors in the request itself: the model's InvalidRequest and the catalog's InvalidId."""
    for module, name in (("model", "InvalidRequest"), ("catalog", "InvalidId")):
        try:
            kind = getattr(__import__(module), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(exc, kind):
            return True
    return False


def classify(exc: BaseException) -> tuple[str, bool]:
    """(error_class, retryable) for an exception raised while rendering one job on a healthy actor."""
    if is_invalid_request(exc):
        return INVALID_REQUEST, False
    if is_oom(exc):
        return GPU_OOM, False
    return type(exc).__name__, True


def failed(job: RenderJob, error_class: str, message: str, *, retryable: bool,
           attempt: int, status: str = FAILED, **extra: Any) -> RenderOutcome:
    return RenderOutcome(render_key=job.render_key, status=status, error_class=error_class,
                         error_message=message, retryable=retryable, attempt=attempt, **extra)
