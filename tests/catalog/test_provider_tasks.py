"""Provider-task records: saved once per task number, followed by later runs, free of secrets."""

from __future__ import annotations

import hashlib

import pytest

from catalog import InvalidId
from catalog.redact import SECRET_FILTER

KEY = hashlib.sha256(b"an api render").hexdigest()


def test_the_first_record_of_a_task_number_wins_and_later_runs_read_it_back(store):
    tasks = store.provider_tasks
    assert tasks.latest(KEY) is None
    first = tasks.record_created(KEY, 1, attempt=1, provider="seedance-2.0", model="m", task_id="cgt-1", urls={})
    assert tasks.record_created(KEY, 1, attempt=1, provider="seedance-2.0", model="m", task_id="cgt-2",
                                urls={}) is None  # a racing writer loses and must follow cgt-1
    tasks.update(first, status="failed", error_kind="ProviderTaskFailed", error_message="InternalServiceError")
    tasks.record_created(KEY, 2, attempt=2, provider="seedance-2.0", model="m", task_id="cgt-3", urls={})

    assert [(t["seq"], t["task_id"], t["status"]) for t in tasks.tasks(KEY)] == [
        (1, "cgt-1", "failed"), (2, "cgt-3", "created")]
    assert tasks.latest(KEY)["task_id"] == "cgt-3"


def test_records_hold_no_secrets_and_refuse_nonsense(store):
    SECRET_FILTER.register({"plant-4f1e9a"})
    record = store.provider_tasks.record_created(
        KEY, 1, attempt=1, provider="fal", model="m", task_id="req-1",
        urls={"status_url": "https://queue.fal.run/a/b/requests/req-1/status?sig=abc"})
    updated = store.provider_tasks.update(record, status="failed", error_message="echoed key plant-4f1e9a")
    assert updated["urls"]["status_url"] == "https://queue.fal.run/a/b/requests/req-1/status"
    assert "plant-4f1e9a" not in str(store.provider_tasks.latest(KEY))
    with pytest.raises(InvalidId):
        store.provider_tasks.update(record, status="done")
    with pytest.raises(InvalidId):
        store.provider_tasks.record_created("../../etc", 1, provider="fal", model="m", task_id="x")
