import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_pipe():
    from model import HappyHorsePipeline
    return HappyHorsePipeline.tiny(seed=0)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    env = os.environ.get("HORSE_GOLDEN_DIR")
    repo = Path(__file__).resolve().parents[2]
    path = Path(env) if env else repo.parent / "shared" / "fixtures" / "golden"
    if not (path / "case_a.safetensors").exists() or not (path / "weights.safetensors").exists():
        pytest.skip(f"golden vectors not found at {path} (set HORSE_GOLDEN_DIR to the shared fixtures/golden folder)")
    return path
