"""Ray execution for Horse: resident render actors and the scheduler around them.

Usable from a plain script (no Prefect here):

    from horse_actors import ModelSpec, PoolConfig, RenderPool, Scheduling, StoreTarget
    config = PoolConfig(ModelSpec("tiny"), StoreTarget("file:///tmp/store"), scheduling=Scheduling(cpu_mode=True))
    with RenderPool(config) as pool:
        outcomes = pool.run(jobs, on_outcome=print)
"""

from .actor import RenderActor
from .cluster import connect, preserved_signal_handlers
from .config import Encoding, ModelSpec, PoolConfig, Scheduling, StoreTarget
from .jobs import Delivery, RenderJob, RenderOutcome, classify
from .pool import RenderPool

__all__ = ["Delivery", "Encoding", "ModelSpec", "PoolConfig", "RenderActor", "RenderJob", "RenderOutcome", "RenderPool",
           "Scheduling", "StoreTarget", "classify", "connect", "preserved_signal_handlers"]
