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


def test_stage_device_seconds_name_the_cost_stages_and_count_qc_with_its_masters():
    from horse_actors.jobs import stage_device_seconds

    timings = {"queue": 9.0, "text_encode": 0.5, "denoise": 1.0, "sr": 4.0, "decode": 1.5, "encode": 0.75,
               "upload": 9.0, "qc": 0.25, "masters": 0.5}
    assert stage_device_seconds(timings, "1080p") == {"base": 1.5, "sr_1080p": 4.0, "decode": 1.5, "encode": 0.75,
                                                      "qc": 0.75}
    assert stage_device_seconds({"text_encode": 0.5, "denoise": 1.0, "decode": 0.25}, "256p") == {
        "base": 1.5, "decode": 0.25}, "stages a render did not run are left out (no SR at 256p, no QC)"
