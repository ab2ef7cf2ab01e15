"""Catalog fixtures: every storage test runs against a local directory and moto's S3 server."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

# catalog_testlib must be importable by name: spawned worker processes import it too.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path):
    """(url, storage_options) of a fresh, empty store root on each backend."""
    if request.param == "local":
        return str(tmp_path / "store"), None
    s3 = request.getfixturevalue("s3_server")
    return f"s3://{s3['bucket']}/t-{uuid.uuid4().hex[:12]}", s3["storage_options"]


@pytest.fixture
def store(backend):
    from catalog import Store

    url, options = backend
    return Store(url, options)


@pytest.fixture(scope="session")
def large_index(tmp_path_factory):
    """A render index of 1M synthetic rows in 40 commits over 20 campaigns (50k rows each), built
    once per session: what a studio's index looks like after a few months, at a size CI affords."""
    import numpy as np

    from benchmarks.scale import grow_index
    from catalog import Store

    store = Store(str(tmp_path_factory.mktemp("large-index") / "store"))
    grown = grow_index(store, rows=1_000_000, commits=40, campaigns=20, seed=11)
    assert grown["rows"] == 1_000_000
    return store
