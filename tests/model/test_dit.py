"""DiT: golden-vector parity with the reference implementation, the spec's pitfalls, full-size shapes."""
import inspect

import pytest
import torch

from model.config import full_dit_config, tiny_dit_config
from model.dit import DiT, ExpertLinear, FourierRoPE, apply_rope, build_dit, gelu7, init_random_, local_attention, rms_norm, swiglu7
from model.packing import audio_coords, build_coords, pack, patchify, text_coords, unpatchify


# ------------------------------------------------------------------------------------ golden
@pytest.fixture(scope="module")
def golden(golden_dir):
    from safetensors.torch import load_file
    model = build_dit(tiny_dit_config())
    model.load_state_dict(load_file(str(golden_dir / "weights.safetensors")), strict=True)
    return model.eval(), load_file(str(golden_dir / "case_a.safetensors"))


def maxdiff(a, b):
    return (a.float() - b.float()).abs().max().item()


def run_case(model, case, compute_dtype):
    model.compute_dtype = compute_dtype
    x, coords, _ = pack(case["video_latent"], case["audio_latent"], case["text_embeddings"], "v2")
    with torch.no_grad():
        v, a, hidden = model(x[:18, :32], x[18:27, :64], x[27:, :64], coords, return_hidden=True)
    return unpatchify(v, (3, 2, 3)), a[None], hidden


def test_golden_packing_and_rope(golden):
    model, case = golden
    x, coords, modality = pack(case["video_latent"], case["audio_latent"], case["text_embeddings"], "v2")
    assert maxdiff(x, case["packed_x"]) <= 1e-6
    assert maxdiff(coords, case["coords_mapping"]) <= 1e-6
    assert torch.equal(modality, case["modality_mapping"])
    assert maxdiff(model.adapter.rope(coords), case["rope"]) <= 1e-6
    emb = model.embed(x[:18, :32], x[18:27, :64], x[27:, :64])
    assert maxdiff(emb, case["x_embedded"]) <= 1e-6


def test_golden_layer0_branches(golden):
    model, case = golden
    x, coords, _ = pack(case["video_latent"], case["audio_latent"], case["text_embeddings"], "v2")
    layer, counts = model.block.layers[0], (18, 9, 7)
    with torch.no_grad():
        h = case["x_embedded"]
        attn = layer.attention(h, model.adapter.rope(coords), counts, torch.bfloat16)
        assert attn.dtype == torch.bfloat16
        assert maxdiff(attn, case["layer0_attn_branch"]) <= 5e-3
        mlp = layer.mlp(h + attn, counts, torch.bfloat16)
        assert maxdiff(mlp, case["layer0_mlp_branch"]) <= 5e-3


def test_golden_bf16_flow(golden):
    model, case = golden
    v, a, hidden = run_case(model, case, torch.bfloat16)
    for i, hs in enumerate(hidden):
        assert hs.dtype == torch.float32           # fp32 residual stream
        assert maxdiff(hs, case[f"hidden_after_layer_{i}"]) <= 5e-3
    for got, ref in ((v, case["video_velocity"]), (a, case["audio_velocity"])):
        err = (got - ref).abs()
        assert err.max().item() <= 1e-2 and err.mean().item() <= 1e-3, (err.max().item(), err.mean().item())


def test_golden_fp32_compute_sharpest(golden):
    model, case = golden
    v, a, hidden = run_case(model, case, torch.float32)
    assert maxdiff(hidden[0], case["fp32compute_hidden_after_layer_0"]) <= 1e-5
    assert maxdiff(v, case["fp32compute_video_velocity"]) <= 1e-5
    assert maxdiff(a, case["fp32compute_audio_velocity"]) <= 1e-5
    model.compute_dtype = torch.bfloat16


def test_golden_bands_match_our_formula(golden):
    model, _ = golden
    assert torch.equal(FourierRoPE(4).bands, model.adapter.rope.bands)


# ------------------------------------------------------------------------------------ pitfalls
def test_patch_in_channel_major_out_spatial_major():
    C, T, h, w = 3, 2, 4, 6
    lat = torch.arange(C * T * h * w, dtype=torch.float32).reshape(1, C, T, h, w)
    tok = patchify(lat)
    assert tok.shape == (T * (h // 2) * (w // 2), C * 4)
    # token 1 = (t=0, row 0, col 1): feature c*4 + ph*2 + pw
    for c in range(C):
        for ph in range(2):
            for pw in range(2):
                assert tok[1, c * 4 + ph * 2 + pw] == lat[0, c, 0, ph, 2 + pw]
    # output layout is spatial-major: feature (ph*2+pw)*C + c
    out = torch.zeros_like(tok)
    for c in range(C):
        for k in range(4):
            out[:, k * C + c] = tok[:, c * 4 + k]
    assert torch.equal(unpatchify(out, (T, h // 2, w // 2)), lat)
    assert not torch.equal(unpatchify(tok, (T, h // 2, w // 2)), lat)   # the asymmetry is real


def test_swiglu7_interleaved_with_plus_one_and_gelu7_clamp():
    x = torch.tensor([[1.0, 2.0, 9.0, -9.0]])           # pairs (u=1, v=2), (u=9, v=-9)
    y = swiglu7(x)
    s = lambda t: torch.sigmoid(torch.tensor(1.702 * t))
    assert torch.allclose(y, torch.tensor([[1 * s(1) * (2 + 1), 7 * s(7) * (-7 + 1)]]))
    assert torch.allclose(gelu7(torch.tensor([10.0, -1.0])), torch.tensor([7 * s(7), -1 * s(-1)]))


def test_rmsnorm_one_plus_w():
    x = torch.randn(3, 8)
    plain = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert torch.allclose(rms_norm(x, torch.zeros(8), 1e-6), plain)
    assert torch.allclose(rms_norm(x, torch.full((8,), 0.5), 1e-6), plain * 1.5)


def test_rope_sin_first_rotates_three_quarters():
    rope = FourierRoPE(4)
    coords = build_coords((2, 2, 2), 5, 3, "v2")
    table = rope(coords)
    assert table.shape == (coords.shape[0], 24)
    angle = ((coords[1, 2] - 0.5) * rope.bands[0])            # token 1: width coord 1, centre 0.5
    assert torch.isclose(table[1, 8], torch.sin(angle)) and torch.isclose(table[1, 12 + 8], torch.cos(angle))
    q = torch.randn(coords.shape[0], 1, 32)
    out = apply_rope(q, table)
    assert torch.equal(out[..., 24:], q[..., 24:])              # dims 24..31 pass through
    sin, cos = table[:, None, 5], table[:, None, 12 + 5]      # dim 5 pairs with dim 17 (rotate-half)
    assert torch.allclose(out[..., 5], q[..., 5] * cos - q[..., 17] * sin)
    assert torch.allclose(out[..., 17], q[..., 17] * cos + q[..., 5] * sin)


def test_text_coords_v2_identity_v1_scaled():
    rope = FourierRoPE(4)
    t2 = text_coords(5, "v2")
    assert torch.allclose(rope(t2)[:, :12], torch.zeros(5, 12)) and torch.allclose(rope(t2)[:, 12:], torch.ones(5, 12))
    one = rope(text_coords(1, "v2"))                              # Errata 1: one token sits at t=-1
    assert torch.allclose(one[0, :4], torch.sin(-rope.bands))
    v1 = text_coords(5, "v1")
    assert torch.equal(v1[:, 0], torch.arange(5.0)) and v1[0, 6] == 2
    assert torch.allclose(rope(v1)[4, :4], torch.sin(rope.bands))  # t=4 scaled by 1/4 -> 1
    with pytest.raises(ValueError):
        rope(text_coords(1, "v1"))
    # audio: v2 ref (Ta-1)//4+1; v1 ref = T; equal when Ta = 4(T-1)+1
    assert torch.equal(audio_coords(9, 3, "v2"), audio_coords(9, 3, "v1"))
    assert audio_coords(126, 32, "v2")[0, 6] == 32                 # Errata 3: 5 s -> Ta 126, T 32


def test_expert_chunk_order_video_audio_text():
    lin = ExpertLinear(2, 1, experts=3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0], [2.0, 0], [3.0, 0]]))
    out = lin(torch.ones(3, 2), (1, 1, 1), torch.float32)
    assert out.flatten().tolist() == [1.0, 2.0, 3.0]


def test_local_attention_matches_masked_full():
    torch.manual_seed(0)
    frames, ft, na, nt, H, D, field = 5, 3, 4, 2, 2, 8, 1
    L, nv = frames * ft + na + nt, frames * ft
    q, k, v = (torch.randn(1, H, L, D) for _ in range(3))
    mask = torch.ones(L, L, dtype=torch.bool)
    fr = torch.arange(nv) // ft
    mask[:nv, :nv] = (fr[:, None] - fr[None, :]).abs() <= field
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = local_attention(q, k, v, (nv, na, nt), ft, field)
    assert torch.allclose(got, ref, atol=1e-6)


def test_timestep_free_forward_and_precision_layout():
    params = list(inspect.signature(DiT.forward).parameters)
    assert not any("time" in p or "sigma" in p for p in params)
    model = build_dit(tiny_dit_config())
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes["block.layers.2.attention.linear_qkv.weight"] == torch.bfloat16
    assert dtypes["block.layers.0.mlp.down_proj.weight"] == torch.bfloat16
    assert dtypes["adapter.video_embedder.weight"] == torch.float32
    assert dtypes["final_linear_audio.weight"] == torch.float32
    assert dtypes["block.layers.0.attention.q_norm.weight"] == torch.float32


def test_gating_adds_one_gate_logit_per_head():
    cfg = tiny_dit_config()
    a = init_random_(build_dit(cfg), 0)
    b = init_random_(build_dit(cfg.replace(enable_attn_gating=False)), 0)
    assert a.cfg.qkv_out == 260 and b.cfg.qkv_out == 256


# ------------------------------------------------------------------------------------ full size
def spec_shapes():
    s = {"adapter.video_embedder.weight": (5120, 192), "adapter.video_embedder.bias": (5120,),
         "adapter.audio_embedder.weight": (5120, 64), "adapter.audio_embedder.bias": (5120,),
         "adapter.text_embedder.weight": (5120, 3584), "adapter.text_embedder.bias": (5120,),
         "adapter.rope.bands": (16,), "final_norm_video.weight": (5120,), "final_norm_audio.weight": (5120,),
         "final_linear_video.weight": (192, 5120), "final_linear_audio.weight": (64, 5120)}
    for i in range(40):
        mm = i in (0, 1, 2, 3, 36, 37, 38, 39)
        p = f"block.layers.{i}."
        s[p + "attention.pre_norm.weight"] = (15360,) if mm else (5120,)
        s[p + "attention.linear_qkv.weight"] = (21624, 5120) if mm else (7208, 5120)
        s[p + "attention.q_norm.weight"] = (384,) if mm else (128,)
        s[p + "attention.k_norm.weight"] = (384,) if mm else (128,)
        s[p + "attention.linear_proj.weight"] = (15360, 5120) if mm else (5120, 5120)
        s[p + "mlp.pre_norm.weight"] = (15360,) if mm else (5120,)
        s[p + "mlp.up_gate_proj.weight"] = (61440, 5120) if i < 4 else (81912, 5120) if mm else (27304, 5120)
        s[p + "mlp.down_proj.weight"] = (15360, 20480) if i < 4 else (15360, 13652) if mm else (5120, 13652)
    return s


@pytest.mark.parametrize("stage", ["base", "distill", "540p_sr", "1080p_sr"])
def test_full_size_on_meta(stage):
    model = build_dit(full_dit_config(stage), device="meta")
    state = model.state_dict()
    assert len(state) == 331
    assert {k: tuple(v.shape) for k, v in state.items()} == spec_shapes()
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e9, 2) == 15.30
    if stage == "1080p_sr":
        assert sorted(set(range(40)) - set(model.cfg.local_attn_layers)) == [3, 7, 11, 15, 19, 23, 27, 31]
        assert model.cfg.frame_receptive_field == 11
    assert model.cfg.coords_style == ("v1" if stage.endswith("sr") else "v2")
