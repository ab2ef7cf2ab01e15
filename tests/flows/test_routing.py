"""Hybrid routing as plain functions (no Ray, no Prefect): which backend a shot gets, what an API
job's render key covers, what the plan quotes, and bad routing refused with a one-line reason."""

from __future__ import annotations

import dataclasses

import pytest

from catalog import Store
from flows.manifest import read_manifest, write_manifest
from flows.dialogue import dialogue_policy
from flows.plan import ModelInfo, make_plan
from flows.routing import Routes, api_quote, api_render_job
from flows.settings import ConfigError, load_settings

from .conftest import shot

MODEL = ModelInfo("f" * 64, "distill", lambda resolution, aspect: (128, 64) if aspect == "16:9" else (64, 128))


def routes(**routing) -> Routes:
    return Routes.from_settings(load_settings(routing=routing).routing)


def test_the_column_wins_then_the_first_matching_rule_then_the_default(tmp_path, tmp_store):
    rows = [shot("s1", "A.", tags=["hero"]), shot("s2", "B.", tags=["broll", "hero"], backend="local"),
            shot("s3", "C.", tags=["dusk", "hero"]), shot("s4", "D.", backend="seedance-2.0-fal"), shot("s5", "E.")]
    manifest = read_manifest(str(write_manifest(rows, tmp_path / "m.parquet")))
    rules = routes(rules=[{"tag": "dusk", "backend": "seedance-2.0-fal"}, {"tag": "hero", "backend": "seedance-2.0"}])
    plan = make_plan(manifest.shots, MODEL, Store(tmp_store), routes=rules)

    backends = {job.shot_id: job.backend for job in plan.jobs}
    assert backends == {"s1": "seedance-2.0", "s2": "local", "s3": "seedance-2.0-fal", "s4": "seedance-2.0-fal",
                        "s5": "local"}
    hero = [job for job in plan.jobs if job.shot_id == "s1"]
    local = [job for job in plan.jobs if job.shot_id == "s5"]
    assert [j.variant for j in hero] == [j.variant for j in local], "the same variants on either backend"
    # 4 local clips of 1 s quoted in GPU time; 4+4+4 API clips quoted per provider
    assert plan.clip_seconds_todo == 8.0
    quote = api_quote(plan, rules)
    assert quote["seedance-2.0"]["clips"] == 4 and quote["seedance-2.0"]["usd"] == round(4 * 0.93, 2)
    assert quote["seedance-2.0-fal"]["clips"] == 8 and quote["seedance-2.0-fal"]["usd"] is None


def test_an_api_render_key_covers_backend_model_and_every_request_field(tmp_path, tmp_store):
    manifest = read_manifest(str(write_manifest([shot("s1", "A.", backend="seedance-2.0")], tmp_path / "m.parquet")))
    base = routes()
    [job, *_] = make_plan(manifest.shots, MODEL, Store(tmp_store), routes=base).jobs
    assert job.key_inputs == job.api_request.key_inputs()
    assert job.key_inputs["model"] == "dreamina-seedance-2-0-260128" and job.key_inputs["backend"] == "api"
    keys = {job.render_key}
    for change in ({"model": "dreamina-seedance-2-0-fast"}, {"extra": {"watermark": True}}, {"resolutions": ("720p",)}):
        spec = dataclasses.replace(base.providers["seedance-2.0"], **change)
        other = Routes(providers={"seedance-2.0": spec})
        keys.add(make_plan(manifest.shots, MODEL, Store(tmp_store), routes=other).jobs[0].render_key)
    assert len(keys) == 4, "a different model, request field or mapped value is a different render"


def test_an_api_job_with_a_line_is_heard_with_the_gate_in_its_key_and_never_re_rolled(tmp_path, tmp_store):
    manifest = read_manifest(str(write_manifest([shot("s1", "A.", backend="seedance-2.0", languages=["en"],
                                                      aspect_ratios=["16:9"])], tmp_path / "m.parquet")))
    heard = dialogue_policy(load_settings(dialogue={"recognizer": "pocketsphinx"}, render={"max_rerolls": 2}))
    off = dialogue_policy(load_settings())  # no whisper_dir: the gate hears nothing in this run
    [job] = make_plan(manifest.shots, MODEL, Store(tmp_store), routes=routes(), dialogue=heard).jobs
    [unheard] = make_plan(manifest.shots, MODEL, Store(tmp_store), routes=routes(), dialogue=off).jobs
    [no_gate] = make_plan(manifest.shots, MODEL, Store(tmp_store), routes=routes()).jobs

    assert (job.dialogue.lines, job.dialogue.language, job.dialogue.unchecked) == (("Spring is here.",), "en", None)
    assert job.dialogue.max_rerolls == 0, "a re-roll of a provider clip would be a new paid task"
    assert job.key_inputs["dialogue"]["recognizer"] == "pocketsphinx" and job.key_inputs["dialogue"]["max_rerolls"] == 0
    assert api_render_job(job).dialogue == job.dialogue, "the provider actor gets the check the key promises"
    assert unheard.dialogue.unchecked and "dialogue" not in unheard.key_inputs
    assert api_render_job(unheard).dialogue.unchecked, "recorded unchecked, never as a pass"
    assert unheard.render_key == no_gate.render_key != job.render_key


@pytest.mark.parametrize("routing, message", [
    ({"rules": [{"tag": "hero", "backend": "seedance-3"}]}, "rules.0.backend: unknown backend 'seedance-3'"),
    ({"providers": {"mine": {}}}, "providers.mine: not a preset"),
    ({"providers": {"seedance-2.0": {"api_key": "sk-planted-secret"}}}, "providers.seedance-2.0: unknown key api_key"),
])
def test_bad_routing_configuration_names_the_key(routing, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_settings(routing=routing)
    assert "sk-planted-secret" not in str(error.value)


def test_a_row_naming_an_unconfigured_backend_is_a_row_error(tmp_path):
    path = write_manifest([shot("s1", "A.", backend="seedance-2.0"), shot("s2", "B.", backend="sora")],
                          tmp_path / "m.parquet")
    manifest = read_manifest(str(path), backends=("local", "seedance-2.0"))
    assert [s.shot_id for s in manifest.shots] == ["s1"]
    assert [str(e) for e in manifest.errors] == [
        "row 2 (shot s2), column backend: unknown backend 'sora' (configured: local, seedance-2.0)"]
