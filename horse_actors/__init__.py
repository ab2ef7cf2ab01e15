"""Ray execution for Horse: resident render actors and the scheduler around them.

Usable from a plain script (no Prefect here):

    from horse_actors import ModelSpec, PoolConfig, RenderPool, Scheduling, StoreTarget
    config = PoolConfig(ModelSpec("tiny"), StoreTarget("file:///tmp/store"), scheduling=Scheduling(cpu_mode=True))
    with RenderPool(config) as pool:
        outcomes = pool.run(jobs, on_outcome=print)   # or pool.stream(jobs, on_outcome=...): none kept

Names are imported on first use, so what needs no Ray (the job records, the API providers' specs
that configuration checks) loads without it.
"""

from importlib import import_module

_EXPORTS = {
    "RenderActor": "actor", "connect": "cluster", "preserved_signal_handlers": "cluster",
    "Encoding": "config", "ModelSpec": "config", "PoolConfig": "config", "Scheduling": "config", "StoreTarget": "config",
    "SpeechSpec": "config",
    "DialogueCheck": "jobs", "Delivery": "jobs", "RenderJob": "jobs", "RenderOutcome": "jobs", "classify": "jobs",
    "RenderPool": "pool",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
