"""The object store goes away mid-run and comes back: catalog writes wait and succeed.

A private moto server (not the session one) is stopped and restarted on the same port; moto
keeps its buckets in the process, so the store is the same store when it returns.
"""

from __future__ import annotations

import logging
import threading
import time

import boto3
import pytest
from moto.server import ThreadedMotoServer

from catalog import Store
from tests.conftest import free_port


@pytest.fixture
def flaky_s3():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="flaky")
    state = {"server": server, "port": port}

    def outage(seconds: float) -> threading.Thread:
        state["server"].stop()

        def come_back():
            time.sleep(seconds)
            state["server"] = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            state["server"].start()

        thread = threading.Thread(target=come_back)
        thread.start()
        return thread

    options = {"client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
               "config_kwargs": {"retries": {"max_attempts": 1}}}  # no botocore retries: ours are tested
    yield Store("s3://flaky/horse", options), outage
    state["server"].stop()


def test_writes_wait_for_the_store_to_come_back(flaky_s3, caplog):
    store, outage = flaky_s3
    first = store.put_blob(b"clip one", ext="mp4")
    returning = outage(seconds=4)
    with caplog.at_level(logging.WARNING):
        second = store.put_blob(b"clip two", ext="mp4")  # starts while the store is down
    returning.join()
    assert second.created and store.blob_exists(second.sha256)
    with store.open_blob(first.uri) as f:
        assert f.read() == b"clip one", "what was stored before the outage is still there"
    assert any("unreachable" in record.getMessage() for record in caplog.records), "the wait is logged"


def test_a_store_that_stays_down_fails_with_its_error(flaky_s3, monkeypatch):
    from botocore.exceptions import EndpointConnectionError

    from catalog import root as storage

    store, outage = flaky_s3
    monkeypatch.setattr(storage, "STORE_RETRY_SECONDS", 3)
    returning = outage(seconds=8)
    with pytest.raises(EndpointConnectionError):
        store.put_blob(b"never stored", ext="mp4")
    returning.join()
