"""Ray execution for Horse: resident render actors and the scheduler around them.

Usable from a plain script (no Prefect here):

    from horse_actors import PoolConfig, RenderPool
    with RenderPool(PoolConfig(model="tiny", store_url="file:///tmp/store", cpu_mode=True)) as pool:
        outcomes = pool.run(jobs, on_outcome=print)
"""

from .actor import RenderActor
from .cluster import connect, preserved_signal_handlers
from .jobs import RenderJob, RenderOutcome, classify
from .pool import PoolConfig, RenderPool

__all__ = ["PoolConfig", "RenderActor", "RenderJob", "RenderOutcome", "RenderPool", "classify", "connect",
           "preserved_signal_handlers"]
