"""Brand-adapter training on the Ray cluster: Ray Train's TorchTrainer runs the steps of
`model.adapter_training` data-parallel (DistributedDataParallel over the adapter's parameters;
gloo on CPU workers, NCCL on GPUs), one worker per device.

Checkpoints live in the catalog, under `training/<name>/` of the store (file:// or s3://): every
`checkpoint_every` steps rank 0 reports a checkpoint (the adapter, the optimizer's tensors and the
loss history, safetensors + JSON) there through Ray Train's storage (a pyarrow S3 filesystem for
s3://, built from the store's public options: every process takes its credentials from its own
environment, none travel as Ray arguments). A worker that dies is restarted up to `max_failures`
times from the last checkpoint; a driver that dies -- on any node -- is recovered by calling
`train_adapter` again with the same store and name (Ray Train reads the run's checkpoints back).
Draws are seeded by (seed, step, rank), so a resumed run takes the same steps as one that never
stopped.

Inputs are clip encodings stored in the catalog (`horse_actors.training_data`); every worker reads
them by blob URI from the store. Worker w trains on clips w, w + workers, ... in turn.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from catalog.root import Root
from media import line_chart_png
from model.adapters import BLOCK_LINEARS, Adapter, AdapterConfig

from .config import StoreTarget

CHECKPOINT_PREFIX = "training"       # <store>/training/<run name>/: Ray Train's run folder
HISTORY_NAME = "history.json"
PLOT_NAME = "loss.png"
ADAPTER_DIR = "adapter"


@dataclass(frozen=True)
class AdapterTrainingConfig:
    """What to train and how. Plain values only: it travels to the workers as a dict."""
    model: str = "tiny"                      # "tiny" or a checkpoint folder
    tiny_seed: int = 0
    stage: str = "distill"
    rank: int = 8
    alpha: float = 8.0
    targets: tuple[str, ...] = BLOCK_LINEARS
    layers: tuple[int, ...] | None = None
    steps: int = 100
    learning_rate: float = 1e-3
    clips_per_step: int = 1                  # per worker
    checkpoint_every: int = 10
    seed: int = 0
    shift: float = 5.0                       # the sampler's sigma shift (PipelineConfig.shift)

    def __post_init__(self):
        for name in ("steps", "checkpoint_every", "clips_per_step"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}: must be a positive integer, got {getattr(self, name)!r}")
        # rank, alpha, stage, targets and layers: the adapter config's own rules (its fingerprint
        # is only known on the workers)
        AdapterConfig(self.rank, self.alpha, self.stage, "0" * 64, self.targets, self.layers)


@dataclass
class TrainingResult:
    adapter: Adapter
    history: list[dict]                      # per step: step, loss (mean over workers), seconds, cpu_seconds (rank 0)
    initial_loss: float                      # fixed-draw loss over all clips before training
    final_loss: float                        # ... and after
    resumed_from: list[int]                  # the checkpoint step of every (re)start that found one
    checkpoints: str                         # URI of the run's checkpoint folder in the catalog
    files: dict[str, Path]                   # adapter (folder), history, plot: local, under output_dir


def checkpoint_storage(store: StoreTarget, name: str):
    """(storage_path, pyarrow filesystem or None, URI) of the run `name`'s checkpoints in the
    store. The S3 filesystem gets only the endpoint and region (public options): pyarrow resolves
    credentials in each process from its environment, so pickling it to the workers carries none."""
    root = Root(store.url, store.options)
    path, uri = root.path(CHECKPOINT_PREFIX), root.uri(f"{CHECKPOINT_PREFIX}/{name}")
    if root.protocol == "file":
        return path, None, uri
    if root.protocol == "s3":
        import pyarrow.fs

        options = store.options or {}
        client = options.get("client_kwargs") or {}
        endpoint = client.get("endpoint_url") or options.get("endpoint_url")
        region = client.get("region_name") or options.get("region_name")
        return path, pyarrow.fs.S3FileSystem(endpoint_override=endpoint, region=region), uri
    raise ValueError(f"training checkpoints need a file:// or s3:// store, not {root.protocol}://")


def train_adapter(encodings: list[str], store: StoreTarget, config: AdapterTrainingConfig, output_dir: str | Path,
                  num_workers: int = 1, use_gpu: bool = False, max_failures: int = 2,
                  name: str = "adapter") -> TrainingResult:
    """Train (or resume training) an adapter on the connected Ray cluster from the encodings (blob
    URIs in `store`), with its checkpoints in `store` under training/<name>/; returns the adapter,
    its loss history, and writes <output_dir>/{adapter/, history.json, loss.png}."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not encodings:
        raise ValueError("train_adapter needs at least one encoded clip")
    storage_path, filesystem, checkpoints = checkpoint_storage(store, name)
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"config": dataclasses.asdict(config), "encodings": list(encodings),
                           "store": {"url": store.url, "options": store.options}},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(name=name, storage_path=storage_path, storage_filesystem=filesystem,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as ckpt:
        adapter = Adapter.load(ckpt)
        state = json.loads((Path(ckpt) / "state.json").read_text())
    files = {"adapter": adapter.save(out / ADAPTER_DIR), "history": out / HISTORY_NAME, "plot": out / PLOT_NAME}
    summary = {k: state[k] for k in ("history", "initial_loss", "final_loss", "resumed_from")}
    files["history"].write_text(json.dumps({"adapter_sha256": adapter.sha256, **summary}))
    files["plot"].write_bytes(line_chart_png([h["loss"] for h in state["history"]], title=f"{name}: training loss"))
    return TrainingResult(adapter, state["history"], state["initial_loss"], state["final_loss"],
                          state["resumed_from"], checkpoints, files)


def _train_loop(loop_config: dict) -> None:
    """One Ray Train worker."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from catalog import Store
    from model import adapter_training as at
    from model.loading import load_dit

    from .training_data import load_encoding

    cfg = AdapterTrainingConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in loop_config["config"].items()})
    ctx = ray.train.get_context()
    rank, workers = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    dit, fingerprint = load_dit(cfg.model, cfg.stage, cfg.tiny_seed, device)
    adapter_config = AdapterConfig(cfg.rank, cfg.alpha, cfg.stage, fingerprint, cfg.targets, cfg.layers)
    optimizer = torch.optim.AdamW(at.trainable_adapter(dit, adapter_config, cfg.seed), lr=cfg.learning_rate)
    store = Store(loop_config["store"]["url"], loop_config["store"]["options"])   # credentials: this node's environment
    examples = [{k: v.to(device) for k, v in load_encoding(store, uri).items()} for uri in loop_config["encodings"]]
    mine = examples[rank::workers] or examples

    objective = at.FlowMatchingObjective(dit)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = at.load_checkpoint(folder, dit, adapter_config, optimizer)
        state["resumed_from"].append(state["step"])
    else:
        state = {"step": 0, "history": [], "resumed_from": [], "final_loss": None,
                 "initial_loss": at.fixed_draw_loss(objective, examples, cfg.seed, cfg.shift)}
    replica = ray.train.torch.prepare_model(objective)          # DistributedDataParallel with 2+ workers

    for step in range(state["step"], cfg.steps):
        started, cpu_started = time.perf_counter(), time.process_time()
        gen = at.step_generator(cfg.seed, step, rank, device)
        batch = [mine[(step * cfg.clips_per_step + j) % len(mine)] for j in range(cfg.clips_per_step)]
        loss = torch.tensor(at.train_step(replica, optimizer, batch, gen, cfg.shift), device=device)
        if workers > 1:
            dist.all_reduce(loss)
            loss /= workers
        state["history"].append({"step": step + 1, "loss": float(loss), "seconds": time.perf_counter() - started,
                                 "cpu_seconds": time.process_time() - cpu_started})
        state["step"] = step + 1
        if state["step"] % cfg.checkpoint_every and state["step"] != cfg.steps:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            report = None
            if rank == 0:
                if state["step"] == cfg.steps:
                    state["final_loss"] = at.fixed_draw_loss(objective, examples, cfg.seed, cfg.shift)
                at.save_checkpoint(tmp, dit, adapter_config, optimizer, state)
                report = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report({"step": state["step"], "loss": float(loss)}, checkpoint=report)
