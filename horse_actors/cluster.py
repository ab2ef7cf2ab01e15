"""Connect this process to Ray without breaking the caller's signal handling.

`ray.init()` on the main thread replaces the SIGTERM handler with one that calls `sys.exit`.
Inside a Prefect flow that turns a cancel into a crash and skips `on_cancellation`
(research/orchestration.md C3), so the handlers present before the call are put back after it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Any, Iterator

import ray

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def preserved_signal_handlers() -> Iterator[None]:
    """Restore SIGTERM/SIGINT handlers on exit (only the main thread can set handlers)."""
    saved = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in saved.items():
                if handler is not None and signal.getsignal(sig) is not handler:
                    signal.signal(sig, handler)


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Make a new local cluster bind 127.0.0.1 instead of the machine's address.

    Ray binds its servers to the node's IP, and Ray 2.60 has no public way to make that IP the
    loopback address: `ray.init(_node_ip_address="127.0.0.1")` and `ray start
    --node-ip-address=127.0.0.1` are both rewritten to the machine's IP
    (`services.resolve_ip_for_localhost`), and every listener then binds it. Only Ray's
    Windows/macOS code path, selected by env RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, keeps the
    node on loopback. Ray reads that variable into `ray_constants.ENABLE_RAY_CLUSTER` when
    `ray` is imported, so the driver's constant is patched for the duration of `ray.init`, and
    the environment copy is what the raylet and its workers inherit. This is the one place that
    touches Ray internals; tests/actors/test_cluster.py fails loudly if Ray changes them.
    """
    from ray._private import ray_constants

    if not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        raise RuntimeError(f"ray {ray.__version__} has no ray_constants.ENABLE_RAY_CLUSTER: horse cannot keep "
                           "its private cluster on 127.0.0.1; pass a ray address or update horse_actors/cluster.py")
    before_env = os.environ.get(_LOOPBACK_ENV)
    before_const = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_const
        if before_env is None:
            os.environ.pop(_LOOPBACK_ENV, None)
        else:
            os.environ[_LOOPBACK_ENV] = before_env


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    object_store_memory: int | None = None,
    namespace: str | None = "horse",
    temp_dir: str | None = None,
    log_to_driver: bool = False,
) -> dict[str, Any]:
    """Connect to Ray once per process and return a short description of the cluster.

    address=None starts a private local cluster bound to 127.0.0.1 with no dashboard; "auto"
    joins the cluster this node belongs to (or RAY_ADDRESS); "host:port" joins that cluster.
    An existing connection (a test fixture, a flow that connected early) is reused as is.
    Resource arguments apply only to a new local cluster.
    """
    if not ray.is_initialized():
        with preserved_signal_handlers():
            if address is None:
                with _loopback_only():
                    ray.init(
                        address="local",
                        num_cpus=num_cpus,
                        num_gpus=num_gpus,
                        object_store_memory=object_store_memory,
                        include_dashboard=False,
                        namespace=namespace,
                        _temp_dir=temp_dir,
                        log_to_driver=log_to_driver,
                        configure_logging=False,
                    )
            else:
                ray.init(address=address, namespace=namespace, log_to_driver=log_to_driver,
                         configure_logging=False)
    resources = ray.cluster_resources()
    return {
        "node_ip": ray.util.get_node_ip_address(),
        "gpus": float(resources.get("GPU", 0.0)),
        "cpus": float(resources.get("CPU", 0.0)),
        "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
    }
