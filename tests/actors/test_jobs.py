"""Failure classes decide retries: no Ray needed to check them."""

from __future__ import annotations

import pytest
import torch

from catalog import InvalidId
from horse_actors import Scheduling, StoreTarget, classify
from model import InvalidRequest


@pytest.mark.parametrize("exc, expected", [
    (InvalidRequest("seconds must be between 0.2 and 30.0"), ("InvalidRequest", False)),
    (InvalidId("shot_id", "a/b", "has a slash"), ("InvalidRequest", False)),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), ("GpuOutOfMemory", False)),
    (RuntimeError("CUDA error: out of memory"), ("GpuOutOfMemory", False)),
    (OSError("connection reset while uploading"), ("OSError", True)),
])
def test_classify(exc, expected):
    assert classify(exc) == expected


def test_pool_config_rejects_nonsense():
    with pytest.raises(ValueError):
        Scheduling(max_in_flight_per_actor=0)
    with pytest.raises(ValueError):
        Scheduling(max_retries=-1)


def test_store_target_refuses_credentials_so_they_never_become_ray_arguments():
    public = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "us-east-1"}}
    assert StoreTarget("s3://bucket/x", public).options == public
    with pytest.raises(ValueError) as refused:
        StoreTarget("s3://bucket/x", {**public, "key": "AKIDEXAMPLE", "secret": "plant-7c1e"})
    assert "plant-7c1e" not in str(refused.value) and "AKIDEXAMPLE" not in str(refused.value)
