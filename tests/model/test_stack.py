"""Checkpoint stacks as files: torch-free descriptions for planning, and pickle refused in every stage."""
import dataclasses
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from model import CheckpointError, HappyHorsePipeline, ModelDescription, describe_checkpoint, describe_tiny


def test_geometry_prompt_and_descriptions_load_no_torch(saved):
    code = ("import sys, model.geometry; from model import compose_prompt, describe_checkpoint, describe_tiny"
            f"; d = describe_checkpoint({str(saved)!r}); d.size_for('1080p', '9:16'); describe_tiny(3).size_for('256p', '4:5')"
            "; compose_prompt('A horse.', [{'speaker': 'Ann', 'language': 'ja', 'line': 'hi'}])"
            "; from model import RenderRequest, stage_key_inputs"
            "; stage_key_inputs(RenderRequest('A horse.', 1.0, 1, resolution='540p'), 'sr', d.stage_fingerprints)"
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


# Each library stage with its safetensors replaced by a real torch.save pickle of the same weights.
LIBRARY_PICKLES = {
    "text_encoder": ("model.safetensors", "pytorch_model.bin"),
    "video_vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "audio_vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
}


@pytest.mark.parametrize("stage", list(LIBRARY_PICKLES))
def test_pickle_refused_in_every_library_stage_unless_opted_in(stage, saved, tiny_pipe, tmp_path):
    ck = tmp_path / "c"
    shutil.copytree(saved, ck)
    safetensors_name, pickle_name = LIBRARY_PICKLES[stage]
    state = load_file(str(ck / stage / safetensors_name))
    (ck / stage / safetensors_name).unlink()
    torch.save(state, ck / stage / pickle_name)

    for refuse in (lambda: HappyHorsePipeline.from_pretrained(ck), lambda: describe_checkpoint(ck)):
        with pytest.raises(CheckpointError) as err:
            refuse()
        assert f"{stage} holds pickle weights ({pickle_name})" in str(err.value) and "allow_pickle" in str(err.value)

    pipe = HappyHorsePipeline.from_pretrained(ck, allow_pickle=True)
    assert pipe.fingerprint == describe_checkpoint(ck, allow_pickle=True).fingerprint
    assert f"{stage}/{pickle_name}" in pipe.weight_hashes
    module = {"text_encoder": pipe.text_encoder.model, "video_vae": pipe.video_codec.vae,
              "audio_vae": pipe.audio_codec.vae}[stage]
    original = {"text_encoder": tiny_pipe.text_encoder.model, "video_vae": tiny_pipe.video_codec.vae,
                "audio_vae": tiny_pipe.audio_codec.vae}[stage]
    loaded, expected = module.state_dict(), original.state_dict()
    assert set(state) <= set(loaded)
    assert all(torch.equal(loaded[k], expected[k]) for k in state)
