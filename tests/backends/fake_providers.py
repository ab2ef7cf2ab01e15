"""Local stand-ins for BytePlus ModelArk's video task API and fal's queue API (tests only).

Each is a real HTTP server on 127.0.0.1 (http.server, one thread per request) that follows the
provider's documented task API: the routes, the JSON shapes, the status words, the auth header
(ModelArk "Bearer <key>", fal "Key <key>"), cancel only while queued, result links that are
presigned (no key) and can expire, refusals and parameter errors in the provider's error format,
and a real mp4 (media.encode_mp4) of the asked ratio, resolution, duration and audio as the
result. Which of these behaviours are documented and which are assumed: README, "API render
backends".

Time never drives a task: each status poll moves it one step (queued for `queued_polls` polls,
then running for `running_polls`, then its end), so tests are fast and deterministic. Scripted
faults (`fault`) answer the next calls of a route with a status (a 429 storm, 5xx) before the
real handler runs. Counters say what the server saw: creates, polls, downloads, cancels, the most
tasks queued or running at once, and any request that brought a key where none belongs.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import tempfile
import threading
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from media import encode_mp4

FPS = 4  # what the fake renders at: a real clip, cheap to encode on a busy CI machine
_clips: dict[tuple, bytes] = {}
_clips_lock = threading.Lock()


def clip_bytes(ratio: str, resolution: str, seconds: int, audio: bool) -> bytes:
    """A real mp4 with the asked shape: short side = the tier's height, long side from the ratio."""
    key = (ratio, resolution, seconds, audio)
    with _clips_lock:
        if key not in _clips:
            w, h = (int(x) for x in ratio.split(":"))
            short = int(resolution.rstrip("p"))
            width, height = (round(short * w / h / 2) * 2, short) if w >= h else (short, round(short * h / w / 2) * 2)
            shades = (np.arange(seconds * FPS) * 7 % 256).astype(np.uint8)  # one flat shade per frame
            frames = np.broadcast_to(shades[:, None, None, None], (len(shades), height, width, 3))
            sound = None
            if audio:
                s = np.arange(seconds * 48_000) / 48_000
                sound = (0.1 * np.sin(2 * np.pi * 440 * s)).astype(np.float32)[None]
            clip = SimpleNamespace(frames=np.ascontiguousarray(frames), audio=sound, fps=FPS, sample_rate=48_000)
            with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
                encode_mp4(clip, f.name, preset="ultrafast")
                _clips[key] = open(f.name, "rb").read()
        return _clips[key]


@dataclass
class Task:
    id: str
    request: dict[str, Any]   # the normalised request: ratio, resolution, seconds, seed, audio, prompt
    status: str = "queued"    # queued, running, succeeded, failed, expired, cancelled
    polls: int = 0
    error: dict | None = None
    links: int = 0


@dataclass
class Fault:
    status: int
    headers: dict = field(default_factory=dict)
    body: Any = None


class FakeProvider:
    """State and behaviour shared by both fakes; subclasses map their routes onto it."""

    auth_scheme = "Bearer"

    def __init__(self, api_key: str):
        self.api_key = api_key
        self.tasks: dict[str, Task] = {}
        self.lock = threading.Lock()
        self.queued_polls, self.running_polls = 1, 1
        self.hold = False                       # tasks stay running until release()
        self.end_with: tuple[str, dict | None] = ("succeeded", None)  # or ("failed", error), ("expired", error)
        self.refuse_words = ("forbidden",)     # prompts containing one are refused
        self.expired_links = 0                 # how many result links per task are born expired
        self.fresh_links = True                # each poll of a succeeded task issues a new link
        self.faults: dict[str, deque[Fault]] = {}
        self.deliver: dict[str, Any] = {}      # override what the result really is, e.g. {"resolution": "720p"}
        self.calls: Counter[str] = Counter()   # every call per route, faults and refusals included
        self.creates = self.polls = self.downloads = self.cancels = 0
        self.active = self.max_active = 0
        self.key_sent_to_files = False
        self.callbacks: list[str] = []
        self._links: dict[str, tuple[str, bool]] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- scripting ---------------------------------------------------------------------------
    def fault(self, route: str, times: int, status: int, headers: dict | None = None, body: Any = None) -> None:
        """Answer the next `times` calls of `route` ("create", "poll", "download") with `status`."""
        self.faults.setdefault(route, deque()).extend(Fault(status, headers or {}, body) for _ in range(times))

    def release(self) -> None:
        self.hold = False

    # -- task life ---------------------------------------------------------------------------
    def _new_task(self, request: dict) -> Task:
        with self.lock:
            task = Task(id=self.task_id(), request=request)
            self.tasks[task.id] = task
            self.creates += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            return task

    def task_id(self) -> str:
        return uuid.uuid4().hex

    def _end(self, task: Task, status: str, error: dict | None = None) -> None:
        task.status, task.error = status, error
        self.active -= 1

    def _step(self, task: Task) -> None:
        """One poll: queued -> running -> its end, one step per `*_polls` polls."""
        with self.lock:
            self.polls += 1
            task.polls += 1
            if task.status == "queued" and task.polls > self.queued_polls:
                task.status = "running"
            if (task.status == "running" and not self.hold
                    and task.polls > self.queued_polls + self.running_polls):
                self._end(task, *self.end_with)

    def _cancel(self, task: Task) -> bool:
        with self.lock:
            self.cancels += 1
            if task.status != "queued":
                return False
            self._end(task, "cancelled")
            return True

    def _link(self, task: Task) -> str:
        with self.lock:
            if task.links and not self.fresh_links:
                token = next(t for t, (tid, _) in self._links.items() if tid == task.id)
            else:
                token = uuid.uuid4().hex
                self._links[token] = (task.id, task.links < self.expired_links)
                task.links += 1
        return f"{self.url}/files/{token}.mp4?X-Signature={uuid.uuid4().hex}"

    def _refused(self, prompt: str) -> bool:
        return any(word in prompt for word in self.refuse_words)

    # -- HTTP --------------------------------------------------------------------------------
    def route(self, method: str, path: str, query: dict, body: Any) -> tuple[int, dict, Any]:
        raise NotImplementedError

    def serve_file(self, token: str, has_key: bool) -> tuple[int, dict, Any]:
        self.key_sent_to_files |= has_key
        self.downloads += 1
        found = self._links.get(token)
        if found is None or found[1]:
            return 403, {}, "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
        r = {**self.tasks[found[0]].request, **self.deliver}
        return 200, {"Content-Type": "video/mp4"}, clip_bytes(r["ratio"], r["resolution"], r["seconds"], r["audio"])


def _handler(provider: FakeProvider):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _serve(self, method: str):
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            auth = self.headers.get("Authorization")
            match = re.fullmatch(r"/files/([0-9a-f]+)\.mp4", parts.path)
            if match:
                status, headers, answer = provider.serve_file(match.group(1), auth is not None)
            else:
                route = provider.route_name(method, parts.path)
                provider.calls[route] += 1
                queue = provider.faults.get(route)
                if queue:
                    fault = queue.popleft()
                    status, headers, answer = fault.status, fault.headers, fault.body
                elif auth != f"{provider.auth_scheme} {provider.api_key}":
                    status, headers, answer = provider.unauthorised(auth)
                else:
                    status, headers, answer = provider.route(method, parts.path, parse_qs(parts.query), body)
            data = answer if isinstance(answer, bytes) else json.dumps(answer).encode() if not isinstance(answer, str) \
                else answer.encode()
            self.send_response(status)
            headers = {"Content-Type": "application/json", **headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._serve("GET")

        def do_POST(self):
            self._serve("POST")

        def do_PUT(self):
            self._serve("PUT")

        def do_DELETE(self):
            self._serve("DELETE")

    return Handler


# ------------------------------------------------------------------------------------------------
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
            if image.get("role") != "first_frame" or not _is_image_data_url(url):
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
            w, h = (int(x) for x in r["ratio"].split(":"))
            short = int(r["resolution"].rstrip("p"))
            tokens = round(short * short * w / h * 24 * r["seconds"] / 1024) if w >= h else \
                round(short * short * h / w * 24 * r["seconds"] / 1024)
            out["content"] = {"video_url": self._link(task)}
            out["usage"] = {"completion_tokens": tokens, "total_tokens": tokens}
        return out


# ------------------------------------------------------------------------------------------------
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
        self._counter = itertools.count(1)
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
        if has_image and not _is_image_data_url(body["image_url"]):
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


def _is_image_data_url(url: str) -> bool:
    match = re.fullmatch(r"data:image/(png|jpeg|webp);base64,([A-Za-z0-9+/=]+)", url or "")
    if not match:
        return False
    try:
        return len(base64.b64decode(match.group(2), validate=True)) > 0
    except ValueError:
        return False
