"""Brand adapters on the tiny preset: applied to a resident pipeline without reloads, switched
without carry-over, saved and read back under one address, foreign key names mapped, bad adapters
refused with the key and reason; the training state resumes exactly (no Ray here)."""
import json

import numpy as np
import pytest
import torch

from model import (Adapter, AdapterConfig, AdapterError, HappyHorsePipeline, InvalidRequest, RenderRequest,
                   StageResultError)
from model.adapters import tensor_shapes

REQ = RenderRequest(prompt="A teal brand shot.", seconds=0.4, seed=5)


def random_adapter(pipe, seed: int, stage: str = "distill", rank: int = 4, **config) -> Adapter:
    cfg = AdapterConfig(rank=rank, alpha=rank, stage=stage, base_fingerprint=pipe.dit_fingerprints[stage], **config)
    gen = torch.Generator().manual_seed(seed)
    shapes = tensor_shapes(cfg, pipe.dits[stage])
    return Adapter(cfg, {k: torch.randn(shape, generator=gen) * 0.05 for k, shape in shapes.items()})


def same(a, b) -> bool:
    return np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)


@pytest.fixture(scope="module")
def pipe():
    """The resident pipeline that switches between adapters."""
    return HappyHorsePipeline.tiny(seed=0)


@pytest.fixture(scope="module")
def adapters(pipe):
    # B covers fewer layers and other targets (peft's own LoRA on the nn.Linear embedder and head)
    return {"A": random_adapter(pipe, 1),
            "B": random_adapter(pipe, 2, targets=("linear_qkv", "down_proj", "video_embedder", "final_linear_audio"),
                                layers=(0, 2, 5))}


@pytest.fixture(scope="module")
def alone(tiny_pipe, adapters):
    """Each adapter rendered on a pipeline that never held another, and the base model."""
    renders = {"none": tiny_pipe(REQ)}
    for key in ("A", "B"):
        renders[key] = HappyHorsePipeline.tiny(seed=0)(REQ, adapter=adapters[key])
    return renders


def test_expert_linear_adapter_gives_each_modality_its_own_pair():
    from model.dit import ExpertLinear
    from model.lora import ExpertLoraLinear
    from peft import LoraConfig

    torch.manual_seed(0)
    base = ExpertLinear(16, 8, experts=3)
    base.weight.data.normal_()
    layer = ExpertLoraLinear(base, "x", LoraConfig(r=2, lora_alpha=4), r=2, lora_alpha=4)
    a, b = torch.randn(6, 16), torch.randn(24, 2)
    layer.lora_A["x"].weight.data.copy_(a)
    layer.lora_B["x"].weight.data.copy_(b)
    x, counts = torch.randn(9, 16), (4, 3, 2)
    out = layer(x, counts, torch.float32)
    start = 0
    for m, n in enumerate(counts):
        rows = x[start:start + n]
        want = rows @ base.weight[m * 8:(m + 1) * 8].float().T + 2.0 * (rows @ a[m * 2:(m + 1) * 2].T) @ b[m * 8:(m + 1) * 8].T
        torch.testing.assert_close(out[start:start + n], want, rtol=1e-5, atol=1e-5)
        start += n


def test_no_adapter_is_bit_identical_to_the_base_model(pipe, adapters, alone):
    with_a = pipe(REQ, adapter=adapters["A"])
    assert not same(with_a, alone["none"])                 # the adapter does change the render
    assert same(pipe(REQ), alone["none"])
    assert same(pipe(REQ, adapter=adapters["A"], adapter_strength=0.0), alone["none"])


def test_switching_adapters_on_one_pipeline_equals_each_alone(pipe, adapters, alone):
    for key in ("A", "B", "none", "A", "B"):
        clip = pipe(REQ, adapter=adapters.get(key))
        assert same(clip, alone[key]), f"{key} after switching differs from {key} alone"
    assert set(pipe.resident_adapters) == {adapters["A"].sha256, adapters["B"].sha256}


def test_strength_scales_the_adapter(pipe, adapters, alone):
    half = pipe(REQ, adapter=adapters["A"], adapter_strength=0.5)
    assert not same(half, alone["A"]) and not same(half, alone["none"])
    assert same(pipe(REQ, adapter=adapters["A"], adapter_strength=0.5), half)


def test_capacity_evicts_least_recently_used_and_reloads_identically(adapters, alone):
    small = HappyHorsePipeline.tiny(seed=0)
    small.adapter_capacity = 1
    small.use_adapter(adapters["A"])
    small.use_adapter(adapters["B"])
    assert small.resident_adapters == (adapters["B"].sha256,)
    assert same(small(REQ, adapter=adapters["A"]), alone["A"])
    assert small.resident_adapters == (adapters["A"].sha256,)


def test_saving_a_pipeline_that_holds_adapters_saves_the_base_model(tmp_path, pipe, adapters, alone):
    pipe.use_adapter(adapters["A"])
    pipe.save_pretrained(tmp_path / "stack")
    assert same(HappyHorsePipeline.from_pretrained(tmp_path / "stack")(REQ), alone["none"])


def test_saved_adapter_reads_back_under_one_address(tmp_path, pipe, adapters, alone):
    a = adapters["A"]
    folder = a.save(tmp_path / "a")
    forms = [Adapter.load(folder), Adapter.load(folder / "adapter_model.safetensors"), Adapter.load(a.to_bytes())]
    assert json.loads((folder / "adapter_config.json").read_text()) == a.config.to_dict()
    for loaded in forms:
        assert loaded.sha256 == a.sha256 and loaded.config == a.config
        assert all(torch.equal(loaded.tensors[k], a.tensors[k]) for k in a.tensors)
    assert same(pipe(REQ, adapter=forms[0]), alone["A"])


def test_reference_module_names_map_to_ours(tmp_path, pipe, adapters):
    """Adapters trained on the reference implementation's module tree, saved by peft (prefix
    base_model.model., adapter-name segment) or kohya-style (diffusion_model., lora_down/lora_up,
    per-module alpha), read back as the same modules, rank, scale and tensors."""
    from safetensors.torch import save_file

    a = adapters["A"]
    fp, rank = a.config.base_fingerprint, a.config.rank
    peft_dir = tmp_path / "peft"
    peft_dir.mkdir()
    save_file({f"base_model.model.{k.replace('.weight', '.default.weight')}": v.to(torch.bfloat16)
               for k, v in a.tensors.items()}, str(peft_dir / "adapter_model.safetensors"))
    (peft_dir / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": rank}))
    peft = Adapter.load(peft_dir, base_fingerprint=fp, stage="distill")
    dit_cfg = pipe.dits["distill"].cfg
    assert peft.config.module_names(dit_cfg) == a.config.module_names(dit_cfg)
    assert (peft.config.rank, peft.config.alpha, peft.config.stage) == (rank, rank, "distill")
    assert all(torch.equal(peft.tensors[k], a.tensors[k].to(torch.bfloat16).float()) for k in a.tensors)

    kohya = {}
    for k, v in a.tensors.items():
        module, kind = k.rsplit(".lora_", 1)
        if kind.startswith("A"):
            kohya[f"diffusion_model.{module}.lora_down.weight"] = v
        else:   # alpha 2*rank doubles the scale: stored B is halved
            kohya[f"diffusion_model.{module}.lora_up.weight"] = v / 2
            kohya[f"diffusion_model.{module}.alpha"] = torch.tensor(float(2 * rank))
    kohya_file = tmp_path / "kohya.safetensors"
    save_file(kohya, str(kohya_file))
    mapped = Adapter.load(kohya_file, base_fingerprint=fp, stage="distill")
    assert mapped.config.alpha == 2 * rank and mapped.config.module_names(dit_cfg) == a.config.module_names(dit_cfg)
    assert all(torch.equal(mapped.tensors[k], kohya[f"diffusion_model.{k}".replace("lora_A", "lora_down")
                                                   .replace("lora_B", "lora_up")]) for k in a.tensors)
    with pytest.raises(AdapterError, match="pass base_fingerprint= and stage="):
        Adapter.load(kohya_file)


def _edit(adapter: Adapter, **changes) -> Adapter:
    tensors = dict(adapter.tensors)
    for key, value in changes.pop("tensors", {}).items():
        if value is None:
            tensors.pop(key)
        else:
            tensors[key] = value
    config = AdapterConfig(**{**adapter.config.__dict__, **changes})
    return Adapter(config, tensors)


QKV_A = "block.layers.0.attention.linear_qkv.lora_A.weight"
BAD = {
    "wrong base fingerprint": (lambda a: _edit(a, base_fingerprint="0" * 64), "base_fingerprint 000000000000 is not "
                               "this model's distill DiT"),
    "wrong shape": (lambda a: _edit(a, tensors={QKV_A: torch.zeros(13, 128)}),
                    f"{QKV_A}: shape [13, 128] does not fit this DiT (expected [12, 128])"),
    "unknown module": (lambda a: _edit(a, tensors={"block.layers.0.attention.q_proj.lora_A.weight": torch.zeros(4, 128)}),
                       "block.layers.0.attention.q_proj: unknown target (no such module in this DiT)"),
    "not a linear": (lambda a: _edit(a, tensors={"block.layers.0.attention.pre_norm.lora_A.weight": torch.zeros(4, 4)}),
                     "block.layers.0.attention.pre_norm: unknown target (a RMSNorm, not a linear)"),
    "outside its layers": (lambda a: _edit(a, layers=(1, 2, 3, 4, 5)), "block.layers.0.attention.linear_proj"
                           ".lora_A.weight: unknown target (not among its config's targets/layers)"),
    "missing tensor": (lambda a: _edit(a, tensors={QKV_A: None}), f"{QKV_A}: missing"),
    "layer out of range": (lambda a: _edit(a, layers=(0, 9)), "layers: 9 is out of range (this DiT has 6 layers)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_adapters_are_refused_with_the_key_and_reason(pipe, adapters, case):
    make, message = BAD[case]
    held = pipe.resident_adapters
    with pytest.raises(AdapterError) as err:
        pipe(REQ, adapter=make(adapters["A"]))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert pipe.resident_adapters == held                   # nothing half-loaded stays behind


def _with_config(adapter: Adapter, **changes) -> bytes:
    from safetensors.torch import save
    return save(adapter.tensors, metadata={"horse_adapter": json.dumps({**adapter.config.to_dict(), **changes})})


@pytest.mark.parametrize("bad, message", [
    (lambda a: a.to_bytes()[:100], "not a safetensors file"),
    (lambda a: b"\x00" * 16, "not a safetensors file"),
    (lambda a: _with_config(a, targets=["linear_qkx"]), "targets: unknown target 'linear_qkx'"),
    (lambda a: _with_config(a, rank=0), "rank: must be a positive integer, got 0"),
    (lambda a: _with_config(a, dropout=0.1), "unknown field 'dropout'"),
])
def test_malformed_adapter_files_are_refused(adapters, bad, message):
    with pytest.raises(AdapterError, match=message):
        Adapter.load(bad(adapters["A"]))


def test_adapter_must_match_the_request(pipe, adapters):
    base_adapter = random_adapter(pipe, 3, stage="base", targets=("linear_proj",))
    with pytest.raises(InvalidRequest, match="trained on the base model; the request uses distill"):
        pipe(REQ, adapter=base_adapter)
    with pytest.raises(InvalidRequest, match="adapter_strength must be a finite number"):
        pipe(REQ, adapter=adapters["A"], adapter_strength=float("nan"))


def test_a_stage_result_names_its_adapter_and_starts_only_renders_with_it(pipe, adapters):
    stored = pipe.render_until(REQ, "base", adapter=adapters["A"], adapter_strength=0.5)
    assert stored.key_inputs["adapter"] == {"sha256": adapters["A"].sha256, "strength": 0.5}
    for other in ({}, {"adapter": adapters["A"]}, {"adapter": adapters["B"], "adapter_strength": 0.5}):
        with pytest.raises(StageResultError, match="made for another request: adapter is"):
            pipe(REQ, start=stored, **other)
    assert same(pipe(REQ, start=stored, adapter=adapters["A"], adapter_strength=0.5),
                pipe(REQ, adapter=adapters["A"], adapter_strength=0.5))


def test_dit_fingerprint_is_per_stage_and_shared_by_the_training_loader(tiny_pipe, saved):
    from model.checkpoint import fingerprint_files
    from model.loading import load_dit
    from model.stack import DIT_STAGES, dit_fingerprint, stack_files

    dit, fp = load_dit("tiny", "distill", tiny_seed=0)
    assert fp == tiny_pipe.dit_fingerprints["distill"] != tiny_pipe.dit_fingerprints["base"]
    assert all(torch.equal(p, q) for p, q in zip(dit.state_dict().values(), tiny_pipe.dits["distill"].state_dict().values()))
    _, fp_saved = load_dit(saved, "distill")
    _, every_file = fingerprint_files(saved, stack_files(saved, DIT_STAGES))
    assert fp_saved == dit_fingerprint("unused", every_file, "distill")   # loading fewer stages: same identity
    assert fp_saved == HappyHorsePipeline.from_pretrained(saved, stages=("distill",)).dit_fingerprints["distill"]


def test_training_resumed_from_a_checkpoint_takes_the_same_steps(tmp_path):
    from model import adapter_training as at
    from model.loading import load_dit

    gen = torch.Generator().manual_seed(0)
    examples = [{"video": torch.randn(1, 8, 3, 2, 4, generator=gen), "audio": torch.randn(1, 9, 8, generator=gen),
                 "text": torch.randn(5, 64, generator=gen)} for _ in range(2)]

    def fresh():
        dit, fp = load_dit("tiny", "distill")
        cfg = AdapterConfig(rank=2, alpha=2, stage="distill", base_fingerprint=fp, targets=("linear_qkv", "down_proj"))
        params = at.trainable_adapter(dit, cfg, seed=0)
        return dit, cfg, torch.optim.AdamW(params, lr=1e-2), at.FlowMatchingObjective(dit)

    def steps(objective, optimizer, start, end):
        for step in range(start, end):
            at.train_step(objective, optimizer, [examples[step % 2]], at.step_generator(0, step, 0), 5.0)

    dit, cfg, opt, obj = fresh()
    steps(obj, opt, 0, 4)
    straight = at.trained_adapter(dit, cfg)

    dit, cfg, opt, obj = fresh()
    steps(obj, opt, 0, 2)
    at.save_checkpoint(tmp_path, dit, cfg, opt, {"step": 2})
    dit, cfg, opt, obj = fresh()
    with pytest.raises(AdapterError, match="the checkpoint is of another adapter config"):
        at.load_checkpoint(tmp_path, dit, AdapterConfig(**{**cfg.__dict__, "rank": 3}), opt)
    assert at.load_checkpoint(tmp_path, dit, cfg, opt) == {"step": 2}
    steps(obj, opt, 2, 4)
    resumed = at.trained_adapter(dit, cfg)
    assert resumed.sha256 == straight.sha256
    assert any(t.abs().sum() > 0 for k, t in straight.tensors.items() if "lora_B" in k)    # it did train
