"""What a RenderPool is configured with, in parts that change for different reasons:
what each actor loads (`ModelSpec`), where it stores (`StoreTarget`), how it encodes
(`Encoding`) and how the pool schedules actors and jobs (`Scheduling`).

The first three travel to the actors as Ray arguments; `Scheduling` stays in the driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class SpeechSpec:
    """The dialogue gate's recogniser, loaded once per actor beside the model (model.speech):
    "whisper" from `whisper_dir` (a local folder, never downloaded) or "pocketsphinx" (English)."""

    backend: str
    whisper_dir: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """What each actor loads, and how it falls back when the GPU runs out of memory."""

    name: str = "tiny"                # "tiny" or a checkpoint folder (HappyHorsePipeline.from_pretrained)
    device: str | None = None         # None: cuda when torch sees one, else cpu
    dtype: str | None = None          # torch dtype name for checkpoints, e.g. "bfloat16"
    offload: bool = False
    tiny_seed: int = 0
    warmup_seconds: float = 1.0       # length of the warm-up render after loading; 0: none
    # Rungs tried in order after a GPU OOM, accumulating (horse_actors.staged).
    oom_ladder: tuple[str, ...] = ("tiled_decode", "lower_sr")
    speech: SpeechSpec | None = None  # the dialogue gate's recogniser; None: no gate on this actor
    # Brand adapters each actor keeps on its model at once (least recently used out); the pool
    # sends a job to an actor that holds its adapter.
    adapter_capacity: int = 4


@dataclass(frozen=True)
class StoreTarget:
    """Where actors put blobs: a catalog Store URL and its non-secret storage options.

    Credentials never travel as Ray arguments: actors read them from their own environment
    (AWS_* variables, instance roles). Options that `catalog.public_options` would drop are
    refused here, so a secret cannot reach an actor through this object."""

    url: str
    options: dict | None = None

    def __post_init__(self):
        from catalog import public_options

        if self.options and public_options(self.options) != self.options:
            raise ValueError("StoreTarget.options must hold only public storage options "
                             "(pass them through catalog.public_options; credentials come from the environment)")


@dataclass(frozen=True)
class Encoding:
    """How actors encode the mp4 (libx264 settings) and where they write it before upload."""

    crf: int = 18
    preset: str = "veryfast"
    scratch_dir: str | None = None    # node-local dir for temp mp4s (default: the system temp dir)


@dataclass(frozen=True)
class Scheduling:
    """How the pool places actors on the cluster and feeds, times and retries jobs."""

    ray_address: str | None = None    # None: private loopback cluster; "auto" or "host:port": join one
    num_actors: int | None = None     # None: one per GPU in the cluster (1 in cpu_mode)
    gpus_per_actor: float = 1.0
    cpus_per_actor: float = 1.0
    cpu_mode: bool = False            # actors ask for no GPU and render on the CPU (tiny preset, CI)
    max_in_flight_per_actor: int = 2  # one rendering + one queued, so the GPU never waits for us
    # The calls in flight on an actor run at once: the next job renders while this one's CPU tail
    # (encode, QC, dialogue gate, hashing, upload) runs. The model renders one job at a time and the
    # actor holds at most two clips (RenderActor.CLIPS_AT_ONCE: one on the model, one finished in
    # its tail); a further call in flight waits for one of them before it renders. False: one call
    # at a time, the model idles during each tail.
    overlap: bool = True
    job_deadline_s: float = 1800.0    # per attempt, counted from when the job reaches the head of its actor's queue
    max_retries: int = 2              # extra attempts for retryable failures (crash, hang, unknown errors)
    max_actor_restarts: int = 3       # replacements per actor slot before the slot is given up
    actor_start_timeout_s: float = 900.0  # load + warm-up; also catches GPUs that never free up
    cancel_grace_s: float = 3.0       # how long running jobs get to stop cooperatively on cancel
    poll_s: float = 0.2

    def __post_init__(self):
        if self.max_in_flight_per_actor < 1:
            raise ValueError("max_in_flight_per_actor must be >= 1")
        if self.max_retries < 0 or self.max_actor_restarts < 0:
            raise ValueError("max_retries and max_actor_restarts must be >= 0")


@dataclass(frozen=True)
class PoolConfig:
    model: ModelSpec
    store: StoreTarget
    encoding: Encoding = field(default_factory=Encoding)
    scheduling: Scheduling = field(default_factory=Scheduling)

    def actor_model(self) -> ModelSpec:
        """The model spec as the actors get it: cpu_mode actors hold no GPU, so they render on the CPU."""
        if self.scheduling.cpu_mode and self.model.device is None:
            return replace(self.model, device="cpu")
        return self.model
