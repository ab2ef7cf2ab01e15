"""Manifests and settings for the flow tests: small tiny-model campaigns."""

from __future__ import annotations

import pytest

from flows.manifest import write_manifest
from flows.settings import load_settings


def shot(shot_id: str, scene: str, **overrides) -> dict:
    row = {
        "campaign_id": "spring-launch",
        "shot_id": shot_id,
        "scene": scene,
        "dialogue": [
            {"speaker": "young woman in a yellow raincoat", "language": "en", "line": "Spring is here."},
            {"speaker": "young woman in a yellow raincoat", "language": "de", "line": "Der Frühling ist da."},
            {"speaker": "young woman in a yellow raincoat", "language": "ja", "line": "春が来た。"},
        ],
        "languages": ["en", "de"],
        "aspect_ratios": ["16:9", "9:16"],
        "resolution": "256p",
        "duration_s": 1.0,
        "takes": 1,
        "seed": 7,
        "background_sound": "light rain on a window",
    }
    row.update(overrides)
    return row


@pytest.fixture
def three_shots() -> list[dict]:
    return [
        shot("s010", "A young woman in a yellow raincoat looks up at the clearing sky and smiles."),
        shot("s020", "Close-up of a ceramic cup of tea steaming on a wooden table by a window."),
        shot("s030", "The woman opens an umbrella printed with spring flowers and walks away."),
    ]


@pytest.fixture
def manifest_path(tmp_path, three_shots):
    return write_manifest(three_shots, tmp_path / "spring.parquet")


@pytest.fixture
def settings(tmp_store):
    """Tiny model on 1 CPU actor (the session cluster's fake GPUs stay free for pool tests; an actor's
    start costs ~7 CPU-s, and what the pool does with several actors is tested in tests/actors)."""
    return load_settings(store_url=tmp_store, ray={"cpu_mode": True, "num_actors": 1, "job_deadline_s": 300}, render={"chunk_size": 6})
