"""`horse doctor`: is this machine ready to render? Each check returns one row; none raises."""

from __future__ import annotations

import platform
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Callable

from flows.settings import HorseSettings


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0
    required: bool = True  # a failed optional check (e.g. no GPU on a laptop) is only a warning

    def as_dict(self) -> dict:
        return asdict(self)


def check_python() -> Check:
    return Check("python", True, f"{platform.python_implementation()} {platform.python_version()}")


def check_torch() -> Check:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return Check("torch", True, f"torch {torch.__version__}, default device {device}, {torch.get_num_threads()} threads")


def check_gpus() -> Check:
    import torch

    if not torch.cuda.is_available():
        return Check("gpus", False, "no CUDA GPU visible: the tiny preset renders on CPU", required=False)
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return Check("gpus", True, f"{len(names)} visible: " + ", ".join(names))


def check_ray(settings: HorseSettings) -> Check:
    import ray

    from horse_actors.cluster import connect

    already = ray.is_initialized()
    connect(settings.ray.address, num_cpus=1)
    try:

        @ray.remote(num_cpus=0)
        def ping() -> str:
            return ray.get_runtime_context().get_node_id()

        ray.get(ping.remote(), timeout=60)
        resources = ray.cluster_resources()
        where = settings.ray.address or "private local cluster on 127.0.0.1"
        return Check(
            "ray",
            True,
            f"ray {ray.__version__}, {where}: {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU",
        )
    finally:
        if not already:
            ray.shutdown()


def check_prefect(settings: HorseSettings) -> Check:
    import prefect
    from prefect.settings import PREFECT_API_URL

    api_url = settings.prefect.api_url or PREFECT_API_URL.value()
    if not api_url:
        return Check("prefect", True, f"prefect {prefect.__version__}, embedded API (ephemeral server per process)")
    import httpx

    try:
        healthy = httpx.get(f"{api_url.rstrip('/')}/health", timeout=5).json() is True
    except (httpx.HTTPError, ValueError) as exc:
        return Check("prefect", False, f"prefect {prefect.__version__}, server {api_url} unreachable: {type(exc).__name__}")
    return Check("prefect", healthy, f"prefect {prefect.__version__}, server {api_url} {'healthy' if healthy else 'unhealthy'}")


def check_encoders() -> Check:
    import av

    missing = []
    for name in ("libx264", "aac"):
        try:
            av.codec.Codec(name, "w")
        except Exception:  # PyAV raises UnknownCodecError (or ValueError in older builds)
            missing.append(name)
    detail = f"PyAV {av.__version__} (libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}): "
    if missing:
        return Check("encoders", False, detail + "missing " + ", ".join(missing))
    return Check("encoders", True, detail + "libx264 and aac available")


def check_store(settings: HorseSettings) -> Check:
    from fsspec.core import url_to_fs

    url = settings.store_url
    try:
        fs, root = url_to_fs(url, **settings.storage_options)
        probe = f"{root.rstrip('/')}/.doctor/{uuid.uuid4().hex}.txt"
        fs.makedirs(probe.rsplit("/", 1)[0], exist_ok=True)  # a new local store starts as no folder
        fs.pipe_file(probe, b"horse doctor")
        ok = fs.cat_file(probe) == b"horse doctor"
        fs.rm_file(probe)
    except Exception as exc:  # report the class only: messages from cloud SDKs may echo credentials
        return Check("store", False, f"{url} not writable: {type(exc).__name__}")
    return Check("store", ok, f"{url} reachable and writable" if ok else f"{url}: read-back differed")


def run_checks(settings: HorseSettings) -> list[Check]:
    checks: list[tuple[str, Callable[[], Check]]] = [
        ("python", check_python),
        ("torch", check_torch),
        ("gpus", check_gpus),
        ("ray", lambda: check_ray(settings)),
        ("prefect", lambda: check_prefect(settings)),
        ("encoders", check_encoders),
        ("store", lambda: check_store(settings)),
    ]
    results = []
    for name, fn in checks:
        start = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:  # a doctor reports, it does not crash
            result = Check(name, False, f"{type(exc).__name__}: {exc}")
        result.seconds = round(time.perf_counter() - start, 3)
        results.append(result)
    return results
