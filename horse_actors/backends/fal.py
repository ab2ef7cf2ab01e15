"""A model on fal through fal's queue API.

POST {base}/{endpoint_id} submits ({"request_id", "status_url", "response_url", "cancel_url"});
GET status_url says IN_QUEUE | IN_PROGRESS | COMPLETED; GET response_url then gives the model's
output ({"video": {"url"}, "seed"}) or, for a request the model rejected, an error status with
{"detail": [{"type", "msg", ...}]} (type content_policy_violation for a refusal); PUT cancel_url
asks to cancel (202 CANCELLATION_REQUESTED, 400 ALREADY_COMPLETED). Auth: "Key <key>".
"""

from __future__ import annotations

import time
from typing import Any

from .http import AUTH, INVALID, NOT_FOUND, PROTOCOL, REFUSED, TASK_FAILED, ProviderError, ProviderHttp
from .request import ApiRequest
from .spec import ProviderSpec
from .task_api import TaskState

_STATUSES = {"IN_QUEUE": "queued", "IN_PROGRESS": "running", "COMPLETED": "succeeded"}
_URLS = ("status_url", "response_url", "cancel_url")


def classify(status: int, body: Any) -> ProviderError:
    detail = body.get("detail") if isinstance(body, dict) else None
    items = detail if isinstance(detail, list) else [{"msg": detail if detail is not None else body}]
    types = [str(item.get("type", "")) for item in items if isinstance(item, dict)]
    message = "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in items)
    if "content_policy_violation" in types:
        kind = REFUSED
    elif status in (401, 403):
        kind = AUTH
    elif status == 404:
        kind = NOT_FOUND
    elif status >= 500:
        kind = TASK_FAILED
    else:
        kind = INVALID
    return ProviderError(kind, f"{status} {', '.join(t for t in types if t) or 'error'}: {message}",
                         status=status, code=",".join(types) or None)


class FalQueue:
    def __init__(self, spec: ProviderSpec, sleep=time.sleep):
        self.spec = spec
        self.http = ProviderHttp(spec, "Key", classify, sleep)

    def body(self, request: ApiRequest) -> dict[str, Any]:
        body = {"prompt": request.prompt, "aspect_ratio": request.ratio, "resolution": request.resolution,
                "duration": str(request.seconds), "seed": request.seed, "generate_audio": request.generate_audio,
                **request.extra}
        if request.image is not None:
            body["image_url"] = request.image_data_url()
        return body

    def create(self, request: ApiRequest) -> tuple[str, dict[str, str]]:
        params = {"fal_webhook": self.spec.callback_url} if self.spec.callback_url else None
        answer = self.http.call("POST", f"{self.spec.base_url.rstrip('/')}/{request.model}",
                                json=self.body(request), params=params)
        if not isinstance(answer, dict) or not answer.get("request_id") or any(not answer.get(u) for u in _URLS):
            raise ProviderError(PROTOCOL, f"submit answered without a request id and its URLs: {answer}")
        return str(answer["request_id"]), {u: str(answer[u]) for u in _URLS}

    def get(self, task_id: str, urls: dict[str, str]) -> TaskState:
        answer = self.http.call("GET", urls["status_url"])
        status = _STATUSES.get(answer.get("status") if isinstance(answer, dict) else None)
        if status is None:
            raise ProviderError(PROTOCOL, f"request {task_id} has an unknown status: {answer}")
        usage = {f"{k}_s" if k.endswith("time") else k: v for k, v in (answer.get("metrics") or {}).items()}
        if status != "succeeded":
            return TaskState(status=status, usage=usage)
        try:
            result = self.http.call("GET", urls["response_url"])
        except ProviderError as exc:
            if exc.kind in (REFUSED, INVALID, TASK_FAILED):  # the request is over, without a video
                return TaskState(status="failed", usage=usage, error=exc)
            raise
        video = result.get("video") if isinstance(result, dict) else None
        if not isinstance(video, dict) or not video.get("url"):
            raise ProviderError(PROTOCOL, f"request {task_id} completed without a video URL")
        return TaskState(status="succeeded", video_url=video["url"], usage=usage,
                         echo={"seed": result["seed"]} if "seed" in result else {})

    def cancel(self, task_id: str, urls: dict[str, str]) -> bool:
        try:
            answer = self.http.call("PUT", urls["cancel_url"])
        except ProviderError as exc:
            if exc.kind in (INVALID, NOT_FOUND):  # ALREADY_COMPLETED, or gone
                return False
            raise
        return isinstance(answer, dict) and answer.get("status") == "CANCELLATION_REQUESTED"
