"""API backend tests: local ModelArk and fal servers on 127.0.0.1, keys in the environment."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the fakes, backends_testlib

from backends_testlib import ARK_KEY, FAL_KEY  # noqa: E402
from fake_fal import FakeFal  # noqa: E402
from fake_modelark import FakeModelArk  # noqa: E402


@pytest.fixture
def modelark(monkeypatch):
    monkeypatch.setenv("ARK_API_KEY", ARK_KEY)
    server = FakeModelArk(ARK_KEY)
    yield server
    server.close()


@pytest.fixture
def fal(monkeypatch):
    monkeypatch.setenv("FAL_KEY", FAL_KEY)
    server = FakeFal(FAL_KEY)
    yield server
    server.close()
