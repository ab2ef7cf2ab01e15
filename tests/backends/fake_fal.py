"""A local fal queue API (tests only): see fake_providers for what it follows."""

from __future__ import annotations

import re
from typing import Any

from fake_providers import FakeProvider, Task, clip_bytes, is_image_data_url


class FakeFal(FakeProvider):
    """POST {url}/{endpoint_id}; GET/PUT {url}/{owner}/{alias}/requests/{id}[/status|/cancel]."""

    auth_scheme = "Key"
    RATIOS = ("21:9", "16:9", "4:3", "1:1", "3:4", "9:16", "auto")
    RESOLUTIONS = ("480p", "720p")
    DURATIONS = ("auto", *(str(s) for s in range(4, 16)))
    FIELDS = {"prompt", "aspect_ratio", "resolution", "duration", "seed", "generate_audio", "image_url",
              "end_image_url", "end_user_id"}

    def __init__(self, api_key: str, endpoints=("bytedance/seedance-2.0/text-to-video",
                                                "bytedance/seedance-2.0/image-to-video")):
        self.endpoints = endpoints
        super().__init__(api_key)

    @property
    def base_url(self) -> str:
        return self.url

    @staticmethod
    def detail(status: int, loc: str, msg: str, kind: str) -> tuple[int, dict, Any]:
        return status, {"X-Fal-Retryable": "false"}, {"detail": [{"loc": ["body", loc], "msg": msg, "type": kind}]}

    def unauthorised(self, auth: str | None) -> tuple[int, dict, Any]:
        return 401, {}, {"detail": f"No user found for Key ID and Secret ({auth})"}

    def route_name(self, method: str, path: str) -> str:
        if method == "POST":
            return "create"
        return "cancel" if path.endswith("/cancel") else "poll" if path.endswith("/status") else "result"

    def route(self, method, path, query, body):
        endpoint = path.strip("/")
        if method == "POST" and endpoint in self.endpoints:
            return self.submit(endpoint, body, query)
        match = re.fullmatch(r"/([\w.-]+)/([\w.-]+)/requests/([\w-]+)(/status|/cancel)?", path)
        task = self.tasks.get(match.group(3)) if match else None
        if task is None:
            return 404, {}, {"detail": "Request not found"}
        action = match.group(4)
        if method == "GET" and action == "/status":
            self._step(task)
            return 200, {}, self.status_view(task)
        if method == "GET" and action is None:
            return self.result(task)
        if method == "PUT" and action == "/cancel":
            if task.status in ("queued", "running"):
                self._cancel(task)  # queued: removed; running: fal only signals the runner, which may go on
                return 202, {}, {"status": "CANCELLATION_REQUESTED"}
            return 400, {}, {"status": "ALREADY_COMPLETED"}
        return 405, {}, {"detail": "Method not allowed"}

    def submit(self, endpoint: str, body: Any, query: dict) -> tuple[int, dict, Any]:
        if not isinstance(body, dict):
            return self.detail(422, "body", "field required", "missing")
        unknown = set(body) - self.FIELDS
        if unknown:
            return self.detail(422, sorted(unknown)[0], "extra fields not permitted", "extra_forbidden")
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            return self.detail(422, "prompt", "field required", "missing")
        for name, allowed in (("aspect_ratio", self.RATIOS), ("resolution", self.RESOLUTIONS),
                              ("duration", self.DURATIONS)):
            if name in body and body[name] not in allowed:
                return self.detail(422, name, f"value is not a valid enumeration member; permitted: {allowed}", "enum")
        has_image = "image_url" in body
        if has_image != endpoint.endswith("image-to-video"):
            return self.detail(422, "image_url", "image_url is required by, and only by, image-to-video", "missing")
        if has_image and not is_image_data_url(body["image_url"]):
            return self.detail(422, "image_url", "could not load the image", "file_download_error")
        if not isinstance(body.get("seed", 0), int) or not isinstance(body.get("generate_audio", True), bool):
            return self.detail(422, "seed", "seed must be an integer and generate_audio a boolean", "type_error")
        if "fal_webhook" in query:
            self.callbacks.extend(query["fal_webhook"])
        task = self._new_task({"ratio": body.get("aspect_ratio", "16:9"), "resolution": body.get("resolution", "720p"),
                               "seconds": int(body.get("duration", "5")), "seed": body.get("seed"),
                               "audio": body.get("generate_audio", True), "prompt": body["prompt"]})
        owner, alias = endpoint.split("/")[:2]
        base = f"{self.url}/{owner}/{alias}/requests/{task.id}"
        return 200, {}, {"request_id": task.id, "response_url": base, "status_url": f"{base}/status",
                         "cancel_url": f"{base}/cancel", "queue_position": 0}

    def status_view(self, task: Task) -> dict:
        status = {"queued": "IN_QUEUE", "running": "IN_PROGRESS"}.get(task.status, "COMPLETED")
        out: dict[str, Any] = {"status": status, "request_id": task.id}
        if status == "IN_QUEUE":
            out["queue_position"] = 0
        if status == "COMPLETED":
            out.update(logs=None, metrics={"inference_time": 1.25})
        return out

    def result(self, task: Task) -> tuple[int, dict, Any]:
        if task.status in ("queued", "running"):
            return 400, {}, {"detail": "Request is still in progress"}
        if task.status == "cancelled":
            return 400, {}, {"detail": "Request was cancelled"}
        if self._refused(task.request["prompt"]):
            return self.detail(422, "prompt", "The content was flagged by a content checker.",
                               "content_policy_violation")
        if task.status != "succeeded":
            return 500, {"X-Fal-Retryable": "false"}, {"detail": [{"msg": "Internal error", "type": "internal_error"}]}
        data = clip_bytes(task.request["ratio"], task.request["resolution"], task.request["seconds"],
                          task.request["audio"])
        return 200, {}, {"video": {"url": self._link(task), "content_type": "video/mp4", "file_name": "out.mp4",
                                   "file_size": len(data)}, "seed": task.request["seed"]}
