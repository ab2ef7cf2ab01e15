"""Seedance through BytePlus ModelArk's video generation task API.

POST {base}/contents/generations/tasks creates a task ({"id"}); GET .../tasks/{id} reports
queued | running | succeeded | failed | expired | cancelled with content.video_url (valid 24 h)
and usage; DELETE .../tasks/{id} cancels a queued task. Errors come as
{"error": {"code", "message"}}: codes with "Sensitive" or "Risk" are content refusals (input or
output); other 400s reject a parameter; 401/403 the key or the account. Auth: Bearer key.
"""

from __future__ import annotations

import time
from typing import Any

from .http import AUTH, INVALID, NOT_FOUND, PROTOCOL, REFUSED, TASK_EXPIRED, TASK_FAILED, ProviderError, ProviderHttp
from .request import ApiRequest
from .spec import ProviderSpec
from .task_api import TaskState

_REFUSAL_MARKS = ("Sensitive", "Risk")


def _error_fields(body: Any) -> tuple[str, str]:
    if not isinstance(body, dict):
        return "Unknown", str(body)[:300]
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    return str(error.get("code") or "Unknown"), str(error.get("message") or "")


def classify(status: int, body: Any) -> ProviderError:
    code, message = _error_fields(body)
    if any(mark in code for mark in _REFUSAL_MARKS):
        kind = REFUSED
    elif status in (401, 403):
        kind = AUTH
    elif status == 404:
        kind = NOT_FOUND
    else:
        kind = INVALID
    return ProviderError(kind, f"{code}: {message}", status=status, code=code)


class ModelArkTasks:
    def __init__(self, spec: ProviderSpec, sleep=time.sleep):
        self.spec = spec
        self.http = ProviderHttp(spec, "Bearer", classify, sleep)
        self._tasks = spec.base_url.rstrip("/") + "/contents/generations/tasks"

    def body(self, request: ApiRequest) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": request.prompt}]
        if request.image is not None:
            content.append({"type": "image_url", "image_url": {"url": request.image_data_url()}, "role": "first_frame"})
        body = {"model": request.model, "content": content, "ratio": request.ratio, "resolution": request.resolution,
                "duration": request.seconds, "seed": request.seed, "generate_audio": request.generate_audio,
                **request.extra}
        if self.spec.callback_url:
            body["callback_url"] = self.spec.callback_url
        return body

    def create(self, request: ApiRequest) -> tuple[str, dict[str, str]]:
        answer = self.http.call("POST", self._tasks, json=self.body(request))
        task_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise ProviderError(PROTOCOL, f"create answered without a task id: {answer}")
        return task_id, {}

    def get(self, task_id: str, urls: dict[str, str]) -> TaskState:
        task = self.http.call("GET", f"{self._tasks}/{task_id}")
        status = task.get("status")
        state = TaskState(status=status, usage=dict(task.get("usage") or {}),
                          echo={k: task[k] for k in ("ratio", "resolution", "duration", "seed") if k in task})
        if status == "succeeded":
            state.video_url = (task.get("content") or {}).get("video_url")
        elif status in ("failed", "expired"):
            code, message = _error_fields(task)
            kind = REFUSED if any(m in code for m in _REFUSAL_MARKS) else TASK_EXPIRED if status == "expired" else TASK_FAILED
            state.error = ProviderError(kind, f"{code}: {message}", code=code)
        elif status not in ("queued", "running", "cancelled"):
            raise ProviderError(PROTOCOL, f"task {task_id} has an unknown status {status!r}")
        return state

    def cancel(self, task_id: str, urls: dict[str, str]) -> bool:
        try:
            self.http.call("DELETE", f"{self._tasks}/{task_id}")
        except ProviderError as exc:
            if exc.kind in (INVALID, NOT_FOUND):  # running, or already over: nothing to cancel
                return False
            raise
        return True
