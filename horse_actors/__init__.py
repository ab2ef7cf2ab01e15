"""Ray execution for Horse: resident render actors, a scheduler around them, mp4 encoding.

Usable from a plain script (no Prefect here):

    from horse_actors import PoolConfig, RenderPool
    with RenderPool(PoolConfig(model="tiny", store_url="file:///tmp/store", cpu_mode=True)) as pool:
        outcomes = pool.run(jobs, on_outcome=print)
"""

from .actor import RenderActor
from .cluster import connect, preserved_signal_handlers
from .encode import EncodeCheckError, EncodeInfo, check_mp4, encode_mp4, poster_jpeg, probe_mp4
from .jobs import RenderJob, RenderOutcome, classify
from .pool import PoolConfig, RenderPool

__all__ = [
    "EncodeCheckError", "EncodeInfo", "PoolConfig", "RenderActor", "RenderJob", "RenderOutcome",
    "RenderPool", "check_mp4", "classify", "connect", "encode_mp4", "poster_jpeg",
    "preserved_signal_handlers", "probe_mp4",
]
