"""Sigma/timestep tables, CFG switch, SR constants, distill re-noising; prompt format and languages."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from model import LANGUAGES, NEGATIVE_PROMPT, compose_prompt, normalize_language
from model.config import PipelineConfig
from model.prompt import NEGATIVE_PROMPT_ATTRIBUTION, space_cjk
from model.schedulers import (distill_step, flow_sigmas, flow_timesteps, make_unipc, sr_noise_coefficients,
                              video_guidance)


def test_sigma_tables():
    assert np.round(flow_sigmas(8), 4).tolist() == [0.9998, 0.972, 0.9373, 0.8926, 0.8331, 0.7497, 0.6247, 0.4164, 0.0]
    assert flow_timesteps(8) == [999, 972, 937, 892, 833, 749, 624, 416]
    assert np.round(flow_sigmas(5), 4).tolist() == [0.9998, 0.9522, 0.8821, 0.7689, 0.5552, 0.0]
    assert flow_timesteps(5) == [999, 952, 882, 768, 555]
    s32 = flow_sigmas(32)
    assert len(s32) == 33 and round(s32[0], 4) == 0.9998 and np.round(s32[-3:-1], 4).tolist() == [0.2498, 0.1388]
    t32 = flow_timesteps(32)
    assert t32[:3] == [999, 993, 986] and t32[-5:] == [480, 416, 340, 249, 138]


@pytest.mark.parametrize("n", [5, 8, 32])
def test_unipc_uses_spec_sigmas(n):
    sched = make_unipc(n)
    assert np.allclose(sched.sigmas.numpy(), flow_sigmas(n), atol=1e-6)
    c = sched.config
    assert (c.solver_order, c.solver_type, c.predict_x0, c.lower_order_final, c.prediction_type) == (
        2, "bh2", True, True, "flow_prediction")


def test_unipc_first_step_is_x0_prediction():
    sched = make_unipc(8)
    x, v = torch.randn(4), torch.randn(4)
    out = sched.step(v, sched.timesteps[0], x).prev_sample
    s0, s1 = flow_sigmas(8)[:2]
    x0 = x - s0 * v
    eps = (x - (1 - s0) * x0) / s0
    # first UniPC step (order 1, predict-x0) lands on the flow path between x0_hat and the noise
    assert torch.allclose(out, (1 - s1) * x0 + s1 * eps, atol=1e-4)


def test_video_guidance_switch():
    ts = flow_timesteps(32)
    scales = [video_guidance(t) for t in ts]
    assert scales[:27] == [5.0] * 27 and scales[27:] == [2.0] * 5
    assert video_guidance(501) == 5.0 and video_guidance(500) == 2.0
    assert PipelineConfig().audio_cfg == 5.0


def test_sr_constants():
    a, b = sr_noise_coefficients()
    assert round(a, 4) == 0.8389 and round(b, 4) == 0.5443
    cfg = PipelineConfig()
    assert cfg.sr_audio_noise == 0.7 and cfg.sr_steps == 5 and cfg.sr_noise_index == 220


def test_distill_step_renoises_with_fresh_noise():
    x, v, n = torch.randn(5), torch.randn(5), torch.randn(5)
    x0 = x - 0.9 * v
    assert torch.allclose(distill_step(x, v, 0.9, 0.5, n), 0.5 * n + 0.5 * x0)
    assert torch.allclose(distill_step(x, v, 0.9, 0.0, None), x0)


# ------------------------------------------------------------------------------------ prompt
def test_compose_prompt_format():
    p = compose_prompt("A woman laughs in a kitchen.",
                       [{"speaker": "Young woman", "language": "en", "line": "Hello\nthere"},
                        {"speaker": "Old man", "language": "ja", "line": "こんにちは"}],
                       "kettle whistling")
    assert p == ('A woman laughs in a kitchen.\n\nDialogue:\n<Young woman, English>: "Hello there"\n'
                 '<Old man, Japanese>: "こ ん に ち は"\n\nBackground Sound:\n<kettle whistling>')
    q = compose_prompt("Quiet street.", [], None)
    assert q.endswith("Dialogue:\n<No dialogue>\n\nBackground Sound:\n<No prominent background sound>")
    with pytest.raises(ValueError, match="xx"):
        compose_prompt("s", [{"speaker": "a", "language": "xx", "line": "b"}])
    with pytest.raises(ValueError):
        compose_prompt("s", [{"speaker": "a", "line": "b"}])


def test_cjk_spacing():
    assert space_cjk("你好，world 2024！") == "你 好 ， world 2024 ！"
    assert space_cjk("안녕하세요 친구") == "안 녕 하 세 요 친 구"
    p = compose_prompt("s", [{"speaker": "a", "language": "yue", "line": "早晨"}])
    assert '<a, Cantonese>: "早 晨"' in p
    p = compose_prompt("s", [{"speaker": "a", "language": "de", "line": "Guten Tag"}])
    assert '<a, German>: "Guten Tag"' in p


def test_languages():
    assert LANGUAGES == ("en", "zh", "yue", "ja", "ko", "de", "fr")
    for code in LANGUAGES:
        assert normalize_language(code) == code
    assert normalize_language("EN-us") == "en"
    assert normalize_language("zh_CN") == "zh"
    assert normalize_language("zh-HK") == "yue"
    assert normalize_language("Cantonese") == "yue"
    assert normalize_language("fr-CA") == "fr"
    for bad in ("es", "", "klingon", "pt-BR"):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            normalize_language(bad)


def test_negative_prompt_verbatim_and_attributed():
    assert "SandAI" in NEGATIVE_PROMPT_ATTRIBUTION and "Apache-2.0" in NEGATIVE_PROMPT_ATTRIBUTION
    for block_start in ("Bright tones, overexposed", ", low quality, worst quality, poor quality",
                        ", emotionless, flat delivery"):
        assert block_start in NEGATIVE_PROMPT
    assert NEGATIVE_PROMPT.endswith("autotune artifacts")
    spec = Path(__file__).resolve().parents[3] / "shared" / "research" / "model.md"
    if spec.exists():
        appendix = spec.read_text().split("## Appendix A")[1]
        assert "".join(re.findall(r'^"(.*)"(?: \+)?$', appendix, flags=re.M)) == NEGATIVE_PROMPT
