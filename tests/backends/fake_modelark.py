"""A local BytePlus ModelArk video task API (tests only): see fake_providers for what it follows."""

from __future__ import annotations

import re
import uuid
from typing import Any

from fake_providers import FakeProvider, Task, clip_size, is_image_data_url


class FakeModelArk(FakeProvider):
    """POST/GET/DELETE {base}/contents/generations/tasks[/{id}] with base = {url}/api/v3."""

    auth_scheme = "Bearer"
    RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4", "21:9", "adaptive")
    RESOLUTIONS = ("480p", "720p", "1080p")
    FIELDS = {"model", "content", "ratio", "resolution", "duration", "seed", "generate_audio", "watermark",
              "callback_url", "return_last_frame", "service_tier", "execution_expires_after", "camera_fixed"}
    PREFIX = "/api/v3/contents/generations/tasks"

    def __init__(self, api_key: str, model: str = "dreamina-seedance-2-0-260128"):
        self.model = model
        super().__init__(api_key)

    @property
    def base_url(self) -> str:
        return f"{self.url}/api/v3"

    def task_id(self) -> str:
        return f"cgt-{uuid.uuid4().hex[:20]}"

    @staticmethod
    def error(status: int, code: str, message: str) -> tuple[int, dict, Any]:
        return status, {}, {"error": {"code": code, "message": f"{message} Request ID: {uuid.uuid4().hex}",
                                      "type": "BadRequest" if status == 400 else "Error"}}

    def unauthorised(self, auth: str | None) -> tuple[int, dict, Any]:
        # Nasty on purpose: echoes what it got, so a client that logs error text would leak it.
        return self.error(401, "AuthenticationError", f"The API key in the request is missing or invalid: {auth}.")

    def route_name(self, method: str, path: str) -> str:
        return {"POST": "create", "GET": "poll", "DELETE": "cancel"}.get(method, "other")

    def route(self, method, path, query, body):
        if method == "POST" and path == self.PREFIX:
            return self.create(body)
        match = re.fullmatch(self.PREFIX + r"/([\w-]+)", path)
        task = self.tasks.get(match.group(1)) if match else None
        if task is None:
            return self.error(404, "NotFound.Task", "The specified task is not found.")
        if method == "GET":
            self._step(task)
            return 200, {}, self.view(task)
        if method == "DELETE":
            if task.status == "queued":
                self._cancel(task)
                return 200, {}, {}
            if task.status in ("running", "cancelled"):
                return self.error(400, "InvalidAction", f"A task in status {task.status} cannot be deleted.")
            del self.tasks[task.id]
            return 200, {}, {}
        return self.error(405, "MethodNotAllowed", method)

    def create(self, body: Any) -> tuple[int, dict, Any]:
        if not isinstance(body, dict):
            return self.error(400, "MissingParameter", "The request body is missing.")
        unknown = set(body) - self.FIELDS
        if unknown:
            return self.error(400, "InvalidParameter", f"Unknown parameter {sorted(unknown)}.")
        if body.get("model") != self.model:
            return self.error(404, "InvalidEndpointOrModel.NotFound", f"The model {body.get('model')} does not exist.")
        content = body.get("content")
        texts = [c.get("text") for c in content or [] if c.get("type") == "text"]
        images = [c for c in content or [] if c.get("type") == "image_url"]
        if len(texts) != 1 or not isinstance(texts[0], str):
            return self.error(400, "InvalidParameter", "content must hold one text item.")
        for image in images:
            url = (image.get("image_url") or {}).get("url", "")
            if image.get("role") != "first_frame" or not is_image_data_url(url):
                return self.error(400, "InvalidParameter", "image_url must be a first_frame image (URL or base64).")
        if body.get("ratio", "adaptive") not in self.RATIOS:
            return self.error(400, "InvalidParameter", f"ratio {body.get('ratio')!r} is not supported.")
        if body.get("resolution", "720p") not in self.RESOLUTIONS:
            return self.error(400, "InvalidParameter", f"resolution {body.get('resolution')!r} is not supported.")
        duration = body.get("duration", 5)
        if not isinstance(duration, int) or not 4 <= duration <= 15:
            return self.error(400, "InvalidParameter", f"duration {duration!r} must be an integer in [4, 15].")
        seed = body.get("seed", -1)
        if not isinstance(seed, int) or not -1 <= seed <= 2**32 - 1:
            return self.error(400, "InvalidParameter", f"seed {seed!r} is out of range.")
        if not isinstance(body.get("generate_audio", True), bool):
            return self.error(400, "InvalidParameter", "generate_audio must be a boolean.")
        if self._refused(texts[0]):
            return self.error(400, "InputTextSensitiveContentDetected",
                              "The request failed because the input text may contain sensitive information.")
        if body.get("callback_url"):
            self.callbacks.append(body["callback_url"])
        task = self._new_task({"ratio": body.get("ratio", "16:9"), "resolution": body.get("resolution", "720p"),
                               "seconds": duration, "seed": seed, "audio": body.get("generate_audio", True),
                               "prompt": texts[0]})
        return 200, {}, {"id": task.id}

    def view(self, task: Task) -> dict:
        r = task.request
        out = {"id": task.id, "model": self.model, "status": task.status, "error": task.error,
               "created_at": 1779348818, "updated_at": 1779348874, "seed": r["seed"], "resolution": r["resolution"],
               "ratio": r["ratio"], "duration": r["seconds"], "framespersecond": 24, "generate_audio": r["audio"],
               "service_tier": "default", "execution_expires_after": 172800}
        if task.status == "succeeded":
            width, height = clip_size(r["ratio"], r["resolution"])
            tokens = round(width * height * 24 * r["seconds"] / 1024)  # Seedance's billing formula
            out["content"] = {"video_url": self._link(task)}
            out["usage"] = {"completion_tokens": tokens, "total_tokens": tokens}
        return out
