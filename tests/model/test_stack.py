"""Checkpoint stacks as files: torch-free descriptions for planning."""
import dataclasses
import subprocess
import sys

import pytest

from model import HappyHorsePipeline, ModelDescription, describe_checkpoint, describe_tiny


def test_geometry_prompt_and_descriptions_load_no_torch(saved):
    code = ("import sys, model.geometry; from model import compose_prompt, describe_checkpoint, describe_tiny"
            f"; d = describe_checkpoint({str(saved)!r}); d.size_for('1080p', '9:16'); describe_tiny(3).size_for('256p', '4:5')"
            "; compose_prompt('A horse.', [{'speaker': 'Ann', 'language': 'ja', 'line': 'hi'}])"
            "; print(sorted({'torch', 'diffusers', 'transformers', 'ray', 'prefect'} & {m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("seed", [0, 3])
def test_tiny_description_matches_the_built_preset(seed, tiny_pipe):
    pipe = tiny_pipe if seed == 0 else HappyHorsePipeline.tiny(seed=seed)
    described = describe_tiny(seed)
    assert isinstance(described, ModelDescription)
    assert described.fingerprint == pipe.fingerprint
    assert described.stages == tuple(pipe.dits)
    for tier in ("256p", "540p", "1080p"):
        for aspect in ("16:9", "9:16", "1:1", "4:5"):
            assert described.size_for(tier, aspect) == pipe.size_for(tier, aspect)
    with pytest.raises(dataclasses.FrozenInstanceError):
        described.fingerprint = "x"
