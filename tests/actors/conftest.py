"""Ray tests for horse_actors use the session `ray_cluster` and `tmp_store` from tests/conftest.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # actors_testlib
