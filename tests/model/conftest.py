from pathlib import Path

import pytest

from tests.conftest import GOLDEN_DIR


@pytest.fixture(scope="session")
def tiny_pipe():
    from model import HappyHorsePipeline
    return HappyHorsePipeline.tiny(seed=0)


@pytest.fixture(scope="session")
def saved(tiny_pipe, tmp_path_factory) -> Path:
    """The tiny preset saved in the released layout, once per session: copy it before editing."""
    folder = tmp_path_factory.mktemp("ckpt") / "horse"
    tiny_pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The golden vectors ship in tests/fixtures/golden/: missing ones are a broken checkout, not a skip."""
    for name in ("case_a.safetensors", "weights.safetensors"):
        if not (GOLDEN_DIR / name).exists():
            pytest.fail(f"golden vectors: {GOLDEN_DIR / name} is missing (tests/fixtures/golden/ or HORSE_GOLDEN_DIR)")
    return GOLDEN_DIR
