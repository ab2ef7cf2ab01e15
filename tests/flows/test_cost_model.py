"""The cost model and the plan quote as plain functions over a real store (Delta index), no Ray,
no Prefect: quotes learned from history per fingerprint, profile and device type, the configured
fallback, previews vs promotes, cached share, time to finish, and the dispatch order of a plan."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import datetime, timedelta, timezone

import pytest

from catalog import Store, render_key
from flows.cost import cost_model, quote_plan, render_slots, time_to_finish
from flows.destinations import run_destinations
from flows.manifest import validate_rows
from flows.plan import ModelInfo, make_plan
from flows.settings import load_settings

from .conftest import shot

FINGERPRINT, OTHER = "f" * 64, "e" * 64
H100 = "NVIDIA H100 80GB HBM3"
MODEL = ModelInfo(FINGERPRINT, "distill", lambda resolution, aspect: (1920, 1088))
# Three 5 s 1080p renders of this model on an H100: seconds per stage, as receipts record them.
RECORDED = {"base": [1.5, 1.6, 1.7], "sr_1080p": [30.0, 31.0, 32.5], "decode": [5.6, 5.8, 6.1], "encode": [4.0, 5.0, 6.0]}
COST_KEY = {"base": "base", "sr_1080p": "sr_1080p", "decode": "decode_1080p", "encode": "encode_1080p"}


def record(store: Store, renders: list[dict], fingerprint=FINGERPRINT, device_type=H100, profile="distill",
           resolution="1080p", seconds=5.0, start: datetime | None = None) -> None:
    """Index rows of finished renders with their per-stage device seconds."""
    start = start or datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = []
    for i, device_seconds in enumerate(renders):
        key = hashlib.sha256(f"{fingerprint}{device_type}{profile}{resolution}{start}{i}".encode()).hexdigest()
        rows.append({"render_key": key, "campaign_id": "history", "shot_id": f"h{i}", "variant": "en-16x9-t1",
                     "status": "ok", "blob_uri": store.blobs.uri("0" * 64), "sha256": "0" * 64,
                     "model_fingerprint": fingerprint, "profile": profile, "device_type": device_type,
                     "device_seconds": device_seconds, "resolution": resolution, "rendered_resolution": resolution,
                     "duration_s": seconds, "created_at": start + timedelta(minutes=i)})
    store.index.commit(rows)


def plan_of(store: Store, *rows: dict, model: ModelInfo = MODEL):
    shots, errors = validate_rows(list(rows))
    assert not errors
    return make_plan(shots, model, store)


def one_shot(shot_id: str = "s1", **overrides) -> dict:
    fields = {"languages": ["en"], "aspect_ratios": ["16:9"], "resolution": "1080p", "duration_s": 5.0, **overrides}
    return shot(shot_id, "A kettle on a stove.", **fields)


def test_quote_matches_the_recorded_stage_times_and_ignores_other_models_devices_and_profiles(tmp_store):
    store = Store(tmp_store)
    record(store, [{stage: times[i] for stage, times in RECORDED.items()} for i in range(3)])
    quote_only_ours = quote_plan(plan_of(store, one_shot()),
                                 cost_model(store, load_settings(store_url=tmp_store), FINGERPRINT, H100))
    # History that says nothing about this model on this device: far off, so it would show.
    far = {"base": 100.0, "sr_1080p": 900.0, "decode": 90.0, "encode": 50.0}
    record(store, [far] * 3, fingerprint=OTHER)
    record(store, [far] * 3, device_type="cpu")
    record(store, [far] * 3, profile="base")
    settings = load_settings(store_url=tmp_store)
    quote = quote_plan(plan_of(store, one_shot()), cost_model(store, settings, FINGERPRINT, H100))

    stages = {s["stage"]: s for s in quote.as_dict()["stages"]}
    assert set(stages) == set(COST_KEY.values())
    for stage, times in RECORDED.items():
        quoted = stages[COST_KEY[stage]]
        assert quoted["basis"] == "history" and quoted["samples"] == 3
        assert quoted["gpu_seconds"] == pytest.approx(sum(times) / 3, abs=0.05)
        for seconds in times:  # every recorded time of a 5 s clip lies within the stated band
            assert quoted["gpu_seconds_low"] <= seconds <= quoted["gpu_seconds_high"], (stage, seconds, quoted)
    assert quote.gpu_seconds == pytest.approx(sum(sum(t) / 3 for t in RECORDED.values()))
    assert quote.as_dict() == quote_only_ours.as_dict(), "other fingerprints, devices and profiles change nothing"
    assert quote.model.device_type == H100 and "3 past renders of this model on NVIDIA H100" in quote.basis


def test_delivery_qc_time_is_quoted_only_for_jobs_with_destinations(tmp_store):
    store = Store(tmp_store)
    record(store, [{**{stage: times[i] for stage, times in RECORDED.items()}, "qc": 2.0} for i in range(3)])
    settings = load_settings(store_url=tmp_store)
    shots, errors = validate_rows([one_shot("plain"), one_shot("checked", destinations=["social"])])
    assert not errors
    plan = make_plan(shots, MODEL, store, destinations=run_destinations(settings))
    quote = quote_plan(plan, cost_model(store, settings, FINGERPRINT, H100))
    stages = {s["stage"]: s for s in quote.as_dict()["stages"]}
    assert stages["qc_1080p"]["clip_seconds"] == 5.0 and stages["qc_1080p"]["gpu_seconds"] == 2.0
    plain, checked = sorted(plan.jobs, key=lambda job: job.shot_id != "plain")
    assert quote.job_seconds[checked.render_key] == pytest.approx(quote.job_seconds[plain.render_key] + 2.0)


def test_without_history_the_configured_published_figures_are_quoted_and_said_to_be(tmp_store):
    store = Store(tmp_store)
    settings = load_settings(store_url=tmp_store)
    quote = quote_plan(plan_of(store, one_shot()), cost_model(store, settings, FINGERPRINT, H100))
    stages = {s["stage"]: s for s in quote.as_dict()["stages"]}
    # The published H100 figures for a 5 s 1080p clip: 1.6 s base + 31.0 s SR + 5.8 s decode = 38.4 s.
    assert (stages["base"]["gpu_seconds"], stages["sr_1080p"]["gpu_seconds"], stages["decode_1080p"]["gpu_seconds"]) \
        == (1.6, 31.0, 5.8)
    assert all(s["basis"] == "configured" and s["samples"] == 0 for s in stages.values())
    assert quote.basis.startswith("from configuration") and "H100" in quote.basis
    assert stages["sr_1080p"]["gpu_seconds_low"] == 15.5 and stages["sr_1080p"]["gpu_seconds_high"] == 46.5

    # History of 256p renders only: base is learned, the 1080p stages stay configured, and the basis says which.
    record(store, [{"base": 1.0, "decode": 0.5, "encode": 0.25}], resolution="256p")
    mixed = quote_plan(plan_of(store, one_shot()), cost_model(store, settings, FINGERPRINT, H100))
    stages = {s["stage"]: s for s in mixed.as_dict()["stages"]}
    assert stages["base"]["basis"] == "history" and stages["base"]["gpu_seconds"] == 1.0
    assert stages["sr_1080p"]["basis"] == "configured" and stages["sr_1080p"]["gpu_seconds"] == 31.0
    assert "(base)" in mixed.basis and "decode_1080p, encode_1080p, sr_1080p" in mixed.basis


def test_an_unset_device_type_is_the_one_this_model_rendered_on_last(tmp_store):
    store = Store(tmp_store)
    record(store, [{"base": 9.0}], device_type="NVIDIA A100-SXM4-80GB", start=datetime(2026, 1, 1, tzinfo=timezone.utc))
    record(store, [{"base": 2.0}], device_type=H100, start=datetime(2026, 2, 1, tzinfo=timezone.utc))
    gpu = load_settings(store_url=tmp_store, model="happyhorse-1.0-distill")
    assert cost_model(store, gpu, FINGERPRINT).device_type == H100
    assert cost_model(store, gpu, FINGERPRINT).rates["base"].mean == 2.0 / 5
    assert cost_model(store, load_settings(store_url=tmp_store), FINGERPRINT).device_type == "cpu", "the tiny preset"


def test_previews_promotes_and_the_share_already_rendered(tmp_store):
    store = Store(tmp_store)
    settings = load_settings(store_url=tmp_store)
    rows = [one_shot(resolution="540p", takes=2)]
    plan = plan_of(store, *rows)
    assert len(plan.jobs) == 2
    model = cost_model(store, settings, FINGERPRINT, H100)
    quote = quote_plan(plan, model).as_dict()
    # per 5 s clip, configured: preview = base 1.6 + decode_256p 0.4 + encode_256p 0.3;
    # promote = sr_540p 5.1 + decode_540p 1.3 + encode_540p 1.0; a full 540p render = 1.6 + 5.1 + 1.3 + 1.0
    assert quote["previews"] == {"jobs": 2, "gpu_seconds": 2 * 2.3}
    assert quote["promotes"] == {"jobs": 1, "gpu_seconds": 7.4}
    assert quote["gpu_seconds"] == 2 * 9.0 and quote["cached_share"] == 0

    first = plan.jobs[0]
    store.index.commit([{**first.entry(), "status": "ok", "blob_uri": store.blobs.uri("0" * 64), "sha256": "0" * 64}])
    again = quote_plan(plan_of(store, *rows), model).as_dict()
    assert again["gpu_seconds"] == 9.0 and again["cached_share"] == 0.5 and again["previews"]["jobs"] == 1


def test_time_to_finish_on_a_what_if_cluster_and_a_deadline_in_the_schedules_timezone(tmp_store):
    store = Store(tmp_store)
    settings = load_settings(store_url=tmp_store, model="happyhorse-1.0-distill", schedule={"timezone": "Asia/Tokyo"})
    rows = [one_shot(f"s{i}") for i in range(100)]
    quote = quote_plan(plan_of(store, *rows), cost_model(store, settings, FINGERPRINT, H100))
    assert quote.gpu_seconds == pytest.approx(100 * 43.4)  # 38.4 s + 5.0 s encode per clip
    assert render_slots(settings) == (None, "unknown: pass --gpus N or set ray.address")
    slots, source = render_slots(settings, gpus=4)
    now = datetime(2026, 3, 1, 20, 0, tzinfo=timezone.utc)  # 05:00 on 2 March in Tokyo
    finish = time_to_finish(quote, slots, source, settings.schedule.timezone, "07:00", now)
    assert (finish["slots"], finish["slots_from"]) == (4, "--gpus 4")
    assert finish["hours"] == pytest.approx(100 * 43.4 / 4 / 3600, abs=1e-4)
    assert finish["by"] == "2026-03-02T07:00+09:00" and finish["finish_at"] == "2026-03-02T05:18+09:00"
    assert finish["fits"] is True and finish["fits_high"] is True
    late = time_to_finish(quote, 1, "--gpus 1", settings.schedule.timezone, "06:00", now)
    assert late["fits"] is False and late["finish_at"] == "2026-03-02T06:12+09:00"
    tomorrow = time_to_finish(quote, 4, "--gpus 4", settings.schedule.timezone, "04:30", now)
    assert tomorrow["by"] == "2026-03-03T04:30+09:00", "a time of day already past means tomorrow"


def test_plan_order_is_priority_then_hero_then_previews_before_promotes(tmp_store):
    rows = [one_shot(f"s{i}", **fields) for i, fields in enumerate(
        [{}, {"priority": 5}, {"tags": ["hero"]}, {"priority": 5, "tags": ["hero"]}, {"priority": -1}])]
    plan = plan_of(Store(tmp_store), *rows)
    assert [job.shot_id for job in plan.jobs] == ["s3", "s1", "s2", "s0", "s4"]
    # shots of several variants: a shot's jobs move together and keep their own order
    wide = {"languages": ["en", "de"], "aspect_ratios": ["16:9", "9:16"], "dialogue": []}
    mixed = plan_of(Store(tmp_store), one_shot("a", **wide), one_shot("b", priority=5, **wide), one_shot("c", **wide))
    assert [job.variant for job in mixed.jobs[:4]] == ["en-16x9-t1", "en-9x16-t1", "de-16x9-t1", "de-9x16-t1"]
    assert [job.shot_id for job in mixed.jobs] == ["b"] * 4 + ["a"] * 4 + ["c"] * 4
    render = plan.jobs[3]
    preview, promote = dataclasses.replace(render, kind="preview"), dataclasses.replace(render, kind="promote")
    ordered = sorted([promote, render, preview], key=lambda job: job.dispatch_priority, reverse=True)
    assert [job.kind for job in ordered] == ["preview", "render", "promote"]


def test_a_jobs_render_key_is_the_key_of_its_inputs(tmp_store):
    """Planning keys many variants at once (`catalog.render_key_grid`): the same keys as one by one."""
    rows = [one_shot(takes=3, aspect_ratios=["16:9", "9:16"], languages=["en", "de"]),
            one_shot("b1", dialogue=[], languages=[])]
    jobs = plan_of(Store(tmp_store), *rows).jobs
    assert len(jobs) == 13
    assert all(job.render_key == render_key(job.key_inputs) for job in jobs)
