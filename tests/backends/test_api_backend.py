"""ApiBackend against local ModelArk and fal servers: a job becomes a verified, stored clip with
its usage; tasks are resumed, never paid twice; refusals, 429 storms, expired links, cancels and
the concurrency limit behave; the dialogue gate hears the clip and never re-rolls it; the key
never leaks."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from backends_testlib import ARK_KEY, FAL_KEY, api_job, fast_spec, png, with_limit

from catalog import Store
from horse_actors import DialogueCheck, SpeechSpec, StoreTarget
from horse_actors.backends import ApiBackend
from media import probe_mp4
from media.dialogue import Thresholds

ROOT = Path(__file__).resolve().parents[2]


def stored_file(store: Store, outcome, tmp_path) -> Path:
    path = tmp_path / "back.mp4"
    with store.open_blob(outcome.blob_uri) as src:
        path.write_bytes(src.read())
    return path


def test_seedance_on_modelark_renders_a_verified_clip_into_the_store(modelark, tmp_store, tmp_path):
    spec = fast_spec("seedance-2.0", modelark, callback_url="https://hooks.example.com/horse")
    job = api_job(spec, image=png(), aspect_ratio="4:5")
    outcome = ApiBackend(spec, StoreTarget(tmp_store)).render(job)

    assert outcome.status == "ok", outcome.error_message
    store = Store(tmp_store)
    info = probe_mp4(stored_file(store, outcome, tmp_path))
    assert (info.width, info.height) == (outcome.width, outcome.height) == (480, 640)  # 3:4 at 480p
    assert info.audio_seconds is not None and abs(info.video_seconds - 4) < 0.5
    assert outcome.adjustments == {"aspect_ratio": {"asked": "4:5", "sent": "3:4"},
                                   "resolution": {"asked": "256p", "sent": "480p"}}
    assert outcome.usage["completion_tokens"] > 0
    assert outcome.model_fingerprint == "seedance-2.0:dreamina-seedance-2-0-260128"
    [record] = store.provider_tasks.tasks(job.render_key)
    assert record["task_id"] == outcome.task_id and record["status"] == "succeeded"
    assert record["usage"] == outcome.usage and record["blob_sha256"] == outcome.sha256
    assert modelark.creates == 1 and modelark.callbacks == ["https://hooks.example.com/horse"]
    assert not modelark.key_sent_to_files


def test_fal_queue_renders_through_the_same_seam(fal, tmp_store, tmp_path):
    spec = fast_spec("seedance-2.0-fal", fal, callback_url="https://hooks.example.com/horse/fal")
    job = api_job(spec, image=png(), aspect_ratio="9:16", seconds=5)
    outcome = ApiBackend(spec, StoreTarget(tmp_store)).render(job)

    assert outcome.status == "ok", outcome.error_message
    assert job.request.model == "bytedance/seedance-2.0/image-to-video"
    assert outcome.adjustments == {"resolution": {"asked": "256p", "sent": "480p"}}
    info = probe_mp4(stored_file(Store(tmp_store), outcome, tmp_path))
    assert (info.width, info.height) == (480, 854)
    # fal reports no tokens: the documented token formula from the delivered clip, and its metrics
    assert outcome.usage["estimated_tokens"] == round(480 * 854 * 24 * info.video_seconds / 1024)
    assert outcome.usage["inference_time_s"] == 1.25
    [record] = Store(tmp_store).provider_tasks.tasks(job.render_key)
    assert record["usage"] == outcome.usage and record["task_id"] == outcome.task_id
    assert fal.creates == 1 and not fal.key_sent_to_files
    assert fal.callbacks == ["https://hooks.example.com/horse/fal"], "the webhook rides on the submit (fal_webhook)"


def wait_for(condition, what: str, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_killed_run_resumes_polling_the_recorded_task_instead_of_paying_twice(modelark, tmp_store, tmp_path):
    spec = fast_spec("seedance-2.0", modelark)
    job = api_job(spec)
    backend = ApiBackend(spec, StoreTarget(tmp_store))
    modelark.hold = True  # the task keeps running while the first run is killed
    payload = tmp_path / "job.pickle"
    payload.write_bytes(pickle.dumps((backend, job)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)])}
    child = subprocess.Popen([sys.executable, str(Path(__file__).parent / "render_in_child.py"), str(payload)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        store = Store(tmp_store)
        wait_for(lambda: store.provider_tasks.latest(job.render_key) is not None and modelark.polls >= 2,
                 "the first run to record its task and poll it")
    finally:
        child.kill()
        child.communicate()
    assert modelark.creates == 1

    modelark.release()
    outcome = backend.render(job)  # the rerun (attempt 1 again)

    assert outcome.status == "ok", outcome.error_message
    assert modelark.creates == 1
    [record] = store.provider_tasks.tasks(job.render_key)
    assert outcome.task_id == record["task_id"] and record["status"] == "succeeded"


def test_a_refused_prompt_is_reported_with_the_providers_reason_and_not_retried(modelark, tmp_store):
    spec = fast_spec("seedance-2.0", modelark)
    outcome = ApiBackend(spec, StoreTarget(tmp_store)).render(api_job(spec, scene="A forbidden scene."))

    assert outcome.status == "failed" and outcome.error_class == "ProviderRefused" and not outcome.retryable
    assert "InputTextSensitiveContentDetected" in outcome.error_message
    assert modelark.calls["create"] == 1 and modelark.creates == 0


def test_a_refusal_of_a_running_request_is_recorded_and_not_paid_for_again(fal, tmp_store):
    spec = fast_spec("seedance-2.0-fal", fal)
    job = api_job(spec, scene="A forbidden scene.", aspect_ratio="16:9")
    backend = ApiBackend(spec, StoreTarget(tmp_store))
    first = backend.render(job)
    again = backend.render(job)  # the next night's run

    for outcome in (first, again):
        assert outcome.error_class == "ProviderRefused" and not outcome.retryable
        assert "content_policy_violation" in outcome.error_message
    assert fal.creates == 1
    [record] = Store(tmp_store).provider_tasks.tasks(job.render_key)
    assert record["status"] == "failed" and record["error_kind"] == "ProviderRefused"


def test_a_429_storm_and_5xx_are_waited_out_honouring_retry_after(modelark, tmp_store):
    waits: list[float] = []

    def sleep(seconds):  # record what was waited; really wait only a moment
        waits.append(seconds)
        time.sleep(min(seconds, 0.01))

    spec = fast_spec("seedance-2.0", modelark)
    modelark.fault("create", 5, 429, {"Retry-After": "2"},
                   {"error": {"code": "RateLimitExceeded.EndpointRPMExceeded", "message": "RPM limit"}})
    modelark.fault("poll", 3, 503, body={"error": {"code": "ServiceUnavailable", "message": "busy"}})
    outcome = ApiBackend(spec, StoreTarget(tmp_store), sleep=sleep).render(api_job(spec))

    assert outcome.status == "ok", outcome.error_message
    assert modelark.calls["create"] == 6 and modelark.creates == 1
    assert [w for w in waits if w >= 2] == [2.0] * 5  # Retry-After (2 s) beat the 10-50 ms backoff


def test_a_storm_longer_than_the_budget_fails_the_attempt_as_retryable(modelark, tmp_store):
    spec = fast_spec("seedance-2.0", modelark, retry_budget_s=0.2)
    modelark.fault("create", 1000, 429)
    outcome = ApiBackend(spec, StoreTarget(tmp_store)).render(api_job(spec))
    assert outcome.error_class == "RateLimited" and outcome.retryable and modelark.creates == 0


def test_an_expired_result_link_is_replaced_by_a_fresh_one(modelark, tmp_store):
    spec = fast_spec("seedance-2.0", modelark)
    modelark.expired_links = 1
    outcome = ApiBackend(spec, StoreTarget(tmp_store)).render(api_job(spec))
    assert outcome.status == "ok", outcome.error_message
    assert modelark.downloads == 2


def test_an_expired_link_without_a_fresh_one_fails_clearly_without_a_new_task(modelark, tmp_store):
    spec = fast_spec("seedance-2.0", modelark)
    modelark.expired_links, modelark.fresh_links = 1, False
    outcome = ApiBackend(spec, StoreTarget(tmp_store)).render(api_job(spec))
    assert outcome.error_class == "ResultLinkExpired" and not outcome.retryable
    assert "can no longer be downloaded" in outcome.error_message and modelark.creates == 1


def test_a_clip_unlike_the_request_is_stored_but_reported_degraded(modelark, tmp_store):
    spec = fast_spec("seedance-2.0", modelark)
    modelark.deliver = {"resolution": "720p", "audio": False}
    outcome = ApiBackend(spec, StoreTarget(tmp_store)).render(api_job(spec))
    assert outcome.status == "degraded" and outcome.rendered_resolution == "720p"
    assert "asked 480p" in outcome.error_message and "no audio track" in outcome.error_message
    assert Store(tmp_store).blob_exists(outcome.sha256)


def test_a_job_cancelled_while_queued_cancels_the_providers_task(modelark, tmp_store):
    spec = fast_spec("seedance-2.0", modelark)
    modelark.queued_polls = 10**6
    job = api_job(spec)
    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(ApiBackend(spec, StoreTarget(tmp_store)).render, job, should_stop=stop.is_set)
        wait_for(lambda: modelark.polls >= 2, "the task to be polled")
        stop.set()
        outcome = future.result(timeout=60)

    assert outcome.status == "cancelled"
    [task] = modelark.tasks.values()
    assert task.status == "cancelled" and modelark.cancels == 1
    assert Store(tmp_store).provider_tasks.latest(job.render_key)["status"] == "cancelled"


def test_the_concurrency_limit_holds_the_providers_queue(modelark, tmp_store):
    spec = with_limit(fast_spec("seedance-2.0", modelark), 2)
    modelark.queued_polls, modelark.running_polls = 3, 3
    backend = ApiBackend(spec, StoreTarget(tmp_store))
    jobs = [api_job(spec, seed=seed, shot=f"s{seed}") for seed in range(6)]
    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(backend.render, jobs))

    assert [o.status for o in outcomes] == ["ok"] * 6
    assert modelark.creates == 6 and modelark.max_active <= 2


SAID = "Happy Horse makes mornings brighter."  # flite: pocketsphinx hears it word for word
GATE_OFF = "dialogue.whisper_dir is not set"


def heard_job(spec, seed: int, unchecked: str | None = None):
    """An API job whose brief has the line SAID and whose check asks the gate to hear it."""
    check = DialogueCheck("en", (SAID,), Thresholds(0.2, 0.8, 0.6), must_say=("Happy Horse",), unchecked=unchecked)
    return replace(api_job(spec, seed=seed, line=SAID), dialogue=check)


@pytest.mark.slow  # a real recogniser hears three clips
def test_the_dialogue_gate_hears_an_api_clip_and_a_failing_one_is_delivered_marked_not_re_rolled(
        modelark, tmp_store, speak):
    spec = fast_spec("seedance-2.0", modelark)
    backend = ApiBackend(spec, StoreTarget(tmp_store), speech=SpeechSpec("pocketsphinx"))
    modelark.speech = speak(SAID)
    right = backend.render(heard_job(spec, seed=1))
    modelark.speech = speak("The weather is cold today.")
    wrong = backend.render(heard_job(spec, seed=2))
    modelark.deliver = {"audio": False}
    silent = backend.render(heard_job(spec, seed=3))

    assert (right.status, right.dialogue_status) == ("ok", "passed"), right.dialogue
    assert "happy horse" in right.dialogue["transcript"].lower() and right.dialogue["recognizer"] == "pocketsphinx"
    assert (right.dialogue["seed"], right.dialogue["attempts"]) == (1, 1)
    assert right.qc_attempts == [{"seed": 1, "dialogue": right.dialogue}], "the attempt's record, as a local clip's"
    assert (wrong.status, wrong.dialogue_status) == ("ok", "dialogue_failed"), "delivered, its failure on record"
    assert "weather" in wrong.dialogue["transcript"] and list(wrong.dialogue["missing_terms"]) == ["Happy Horse"]
    assert wrong.dialogue["reason"].endswith("; not re-rolled: a re-roll is a new paid seedance-2.0 task")
    assert (silent.status, silent.dialogue_status) == ("degraded", "dialogue_failed")  # no sound track at all
    assert silent.dialogue["reason"].startswith("no speech")
    assert modelark.creates == 3, "one paid task per clip: no failing clip was rendered again"
    assert backend.stats()["recognizer"] == "pocketsphinx"


def test_without_a_recogniser_an_api_clip_is_unchecked_and_a_check_it_cannot_do_is_refused_unpaid(
        modelark, tmp_store):
    spec = fast_spec("seedance-2.0", modelark)
    backend = ApiBackend(spec, StoreTarget(tmp_store))  # a run whose gate is off: no recogniser
    off = backend.render(heard_job(spec, seed=1, unchecked=GATE_OFF))
    refused = backend.render(heard_job(spec, seed=2))  # a key promising a check nobody here can do

    assert off.status == "ok" and off.dialogue == {"status": "unchecked", "reason": GATE_OFF, "language": "en"}
    assert off.dialogue_status == "unchecked" and off.qc_attempts == [], "recorded unchecked, never as a pass"
    assert (refused.status, refused.error_class, refused.retryable) == ("failed", "InvalidRequest", False)
    assert "no speech recogniser" in refused.error_message
    assert modelark.calls["create"] == 1, "the check it cannot do was refused before a task was paid for"


def test_the_key_never_reaches_logs_records_outcomes_or_pickles(modelark, fal, tmp_store, caplog, monkeypatch):
    caplog.set_level("DEBUG")
    spec, fal_spec = fast_spec("seedance-2.0", modelark), fast_spec("seedance-2.0-fal", fal)
    backend, fal_backend = ApiBackend(spec, StoreTarget(tmp_store)), ApiBackend(fal_spec, StoreTarget(tmp_store))
    jobs = [api_job(spec), api_job(spec, scene="A forbidden scene.", shot="refused"), api_job(fal_spec, shot="fal")]
    outcomes = [backend.render(jobs[0]), backend.render(jobs[1]), fal_backend.render(jobs[2])]
    assert [o.status for o in outcomes] == ["ok", "failed", "ok"]
    assert modelark.creates == fal.creates == 1  # the keys were used
    wrong_key = f"ark-wrong-{os.urandom(8).hex()}"
    monkeypatch.setenv("ARK_API_KEY", wrong_key)  # the server echoes a rejected key in its error text
    outcomes.append(backend.render(api_job(spec, shot="wrong-key")))
    assert outcomes[-1].error_class == "ProviderAuth"

    evidence = [caplog.text, *(r.getMessage() for r in caplog.records), repr(outcomes), repr(backend)]
    blobs = [pickle.dumps(backend), pickle.dumps(fal_backend), pickle.dumps(jobs), pickle.dumps(outcomes)]
    blobs += [p.read_bytes() for p in Path(tmp_store.removeprefix("file://")).rglob("*") if p.is_file()]
    for secret in (ARK_KEY, FAL_KEY, wrong_key):
        assert not any(secret in text for text in evidence)
        assert not any(secret.encode() in blob for blob in blobs)
    assert not modelark.key_sent_to_files and not fal.key_sent_to_files
