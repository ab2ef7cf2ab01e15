"""Session-scoped real engines for the whole suite (DESIGN.md §9).

- `ray_cluster`: a private local Ray cluster with 2 fake GPUs, every listener on 127.0.0.1.
- `prefect_api`: a Prefect test server (subprocess, temp SQLite) with its own PREFECT_HOME.
- `s3_server`: moto's threaded S3 server on 127.0.0.1 with one bucket.
- `tmp_store`: a fresh file:// store root per test.

Environment hygiene is applied at import time, before any test imports ray or prefect.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="horse-tests-"))
# Set by .ci/run, which installs the system packages some tests need: there, a missing one fails.
IN_CI = os.environ.get("HORSE_CI") == "1"

os.environ.update(
    {
        "RAY_AUTH_MODE": "disabled",
        # Ray 2.60: makes every Ray listener bind 127.0.0.1 instead of the machine's address.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        # No idle Python workers started with each cluster (the session's, and the private one every
        # `horse` subprocess starts): render actors get their own worker processes anyway, and idle
        # workers cost ~1.7 CPU-s to start and keep polling for as long as the cluster lives.
        "RAY_prestart_worker_first_driver": "0",
        # One intra-op thread in the test processes and the `horse` processes they start, as Ray
        # gives its workers and the tiny preset asks for: the suite runs on 2 cores shared by 2
        # xdist workers, where more threads only spin-wait (tiny build 2.2 -> 0.3 CPU-s).
        "OMP_NUM_THREADS": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_HOME": str(_SESSION_TMP / "prefect-home"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # Fake credentials: nothing may ever reach a real cloud from the tests.
        "AWS_ACCESS_KEY_ID": "horse-test-key",
        "AWS_SECRET_ACCESS_KEY": "horse-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        # Fake provider keys, set before the session's Ray cluster starts so its workers have them
        # the way a real node would (API backends read them from their own environment). Random,
        # so a leak scan can find them anywhere.
        "ARK_API_KEY": f"ark-test-key-{uuid.uuid4().hex}",
        "FAL_KEY": f"fal-test-key-{uuid.uuid4().hex}",
    }
)
for _var in ("CUDA_VISIBLE_DEVICES", "PREFECT_API_URL", "RAY_ADDRESS", "HORSE_CONFIG"):
    os.environ.pop(_var, None)
for _var in [k for k in os.environ if k.startswith("HORSE_")]:
    os.environ.pop(_var)

import pytest  # noqa: E402

# Golden vectors of the reference DiT (data, in the repo so every clone runs the parity tests).
GOLDEN_DIR = Path(os.environ.get("HORSE_GOLDEN_DIR", Path(__file__).resolve().parent / "fixtures" / "golden"))
ARTIFACTS_DIR = Path(__file__).resolve().parents[1] / "test-artifacts"


def require(found: object, what: str) -> None:
    """A test that needs a system package (Chromium, PostgreSQL): in CI it fails without it;
    in a user's clone it is skipped, saying what to install."""
    if not found:
        message = f"needs {what}"
        if IN_CI:
            pytest.fail(f"{message}, which .ci/run installs: see its apt-get output above", pytrace=False)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """A private Ray cluster: 4 logical CPUs (the machine has 2 cores), 2 fake GPUs, loopback only."""
    import ray

    temp_dir = Path(tempfile.mkdtemp(prefix="hr-", dir="/tmp"))  # short: Ray's AF_UNIX paths max ~107 bytes
    context = ray.init(
        num_cpus=4,
        num_gpus=2,
        include_dashboard=False,
        object_store_memory=256 * 1024**2,
        _temp_dir=str(temp_dir),
        log_to_driver=False,
        configure_logging=False,
        namespace="horse-tests",
    )
    yield context
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_api():
    """A Prefect test server; PREFECT_API_URL is exported so child processes find it too."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        url = PREFECT_API_URL.value()
        os.environ["PREFECT_API_URL"] = url
        yield url
        os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 API on 127.0.0.1 with the bucket `horse-test`."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = "horse-test"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    yield {
        "endpoint_url": endpoint,
        "bucket": bucket,
        "storage_options": {
            "key": os.environ["AWS_ACCESS_KEY_ID"],
            "secret": os.environ["AWS_SECRET_ACCESS_KEY"],
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        },
    }
    server.stop()


class FlakyS3:
    """A private moto S3 server (bucket `flaky`) that a test stops and starts again on the same
    port. moto keeps its buckets in this process, so the store is the same store when it returns."""

    def __init__(self):
        import boto3

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.start()
        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1").create_bucket(Bucket="flaky")
        self.options = {"client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
                        "config_kwargs": {"retries": {"total_max_attempts": 1}}}  # one try, no botocore retries: ours are tested

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def outage(self, seconds: float) -> threading.Thread:
        """Stop now, start again after `seconds` (join the returned thread to wait for it)."""
        self.stop()

        def come_back():
            time.sleep(seconds)
            self.start()

        thread = threading.Thread(target=come_back)
        thread.start()
        return thread

    @contextlib.contextmanager
    def down_until_waited_for(self):
        """Stopped until the catalog logs that it is waiting for the store, started again right
        then: a call made inside can only succeed by waiting. Yields an Event set at the wait."""
        waited = threading.Event()
        server = self

        class ComeBackWhenWaitedFor(logging.Handler):
            def emit(self, record):
                if not waited.is_set() and "unreachable during" in record.getMessage():
                    waited.set()
                    server.start()

        handler, logger = ComeBackWhenWaitedFor(logging.WARNING), logging.getLogger("catalog.outage")
        self.stop()
        logger.addHandler(handler)
        try:
            yield waited
        finally:
            logger.removeHandler(handler)
            if not waited.is_set():
                self.start()


@contextlib.contextmanager
def ctrl_c_reaches_children():
    """Children started inside get Ctrl-C's default action, as a terminal's foreground job does,
    even when the test run itself was started with SIGINT ignored (a background job of a
    non-interactive shell is): an ignored signal stays ignored across fork and exec, so a test
    that stops a child with SIGINT would wait on a child that never sees it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def flaky_s3():
    server = FlakyS3()
    yield server
    server.stop()


@pytest.fixture
def tmp_store(tmp_path) -> str:
    """A fresh, empty store root as a file:// URL."""
    root = tmp_path / "store"
    root.mkdir()
    return root.as_uri()


@pytest.fixture(scope="session")
def speak(tmp_path_factory):
    """`speak(text)`: the text spoken by Debian's flite (voice rms), 16 kHz mono float32, for the
    dialogue gate's tests (a real recogniser needs real speech)."""
    import subprocess
    import wave

    import numpy as np

    require(shutil.which("flite"), "flite (Debian package `flite`) to synthesise speech")
    folder = tmp_path_factory.mktemp("speech")

    def speak(text: str) -> np.ndarray:
        path = folder / "line.wav"
        subprocess.run(["flite", "-voice", "rms", "-t", text, "-o", str(path)], check=True)
        with wave.open(str(path)) as f:
            assert (f.getframerate(), f.getnchannels()) == (16000, 1)
            return np.frombuffer(f.readframes(f.getnframes()), np.int16).astype(np.float32) / 32768
    return speak


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests keep files a person may want to look at (screenshots, contact sheets)."""
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    return ARTIFACTS_DIR


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)
