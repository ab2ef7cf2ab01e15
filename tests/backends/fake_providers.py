"""Local stand-ins for provider task APIs (tests only): the shared machinery of FakeModelArk
(fake_modelark.py, BytePlus ModelArk's video task API) and FakeFal (fake_fal.py, fal's queue API).

Each is a real HTTP server on 127.0.0.1 (http.server, one thread per request) that follows the
provider's documented task API: the routes, the JSON shapes, the status words, the auth header
(ModelArk "Bearer <key>", fal "Key <key>"), cancel only while queued, result links that are
presigned (no key) and can expire, refusals and parameter errors in the provider's error format,
and a real mp4 (media.encode_mp4) of the asked ratio, resolution, duration and audio as the
result (its sound a tone, or the speech a test sets in `speech` for the dialogue gate). Which of these behaviours are documented and which are assumed: README, "API render
backends".

Time never drives a task: each status poll moves it one step (queued for `queued_polls` polls,
then running for `running_polls`, then its end), so tests are fast and deterministic. Scripted
faults (`fault`) answer the next calls of a route with a status (a 429 storm, 5xx) before the
real handler runs. Counters say what the server saw: creates, polls, downloads, cancels (calls, whatever
their effect), the most tasks queued or running at once, and any request that brought a key where
none belongs. `run_limit` keeps tasks queued while that many run (the provider's capacity), and
`cancel_races` makes a queued task start just as its cancel arrives (fal only signals it then).
"""

from __future__ import annotations

import base64
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
from scipy.signal import resample_poly

from media import encode_mp4

FPS = 4  # what the fake renders at: a real clip, cheap to encode on a busy CI machine
_clips: dict[tuple, bytes] = {}
_clips_lock = threading.Lock()


def clip_size(ratio: str, resolution: str) -> tuple[int, int]:
    """(width, height): short side = the tier's height, long side from the ratio, both even."""
    w, h = (int(x) for x in ratio.split(":"))
    short = int(resolution.rstrip("p"))
    return (round(short * w / h / 2) * 2, short) if w >= h else (short, round(short * h / w / 2) * 2)


def clip_bytes(ratio: str, resolution: str, seconds: int, audio: bool, speech: np.ndarray | None = None) -> bytes:
    """A real mp4 of the asked shape, length and audio: a tone, or `speech` (16 kHz mono) from 0.25 s."""
    key = (ratio, resolution, seconds, audio, None if speech is None else hash(speech.tobytes()))
    with _clips_lock:
        if key not in _clips:
            width, height = clip_size(ratio, resolution)
            shades = (np.arange(seconds * FPS) * 7 % 256).astype(np.uint8)  # one flat shade per frame
            frames = np.broadcast_to(shades[:, None, None, None], (len(shades), height, width, 3))
            sound = None
            if audio and speech is not None:
                track = np.zeros(seconds * 48_000, np.float32)
                said = resample_poly(speech, 3, 1).astype(np.float32)[: track.size - 12_000]
                track[12_000: 12_000 + said.size] = said
                sound = track[None]
            elif audio:
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
        self.run_limit = 10**6                  # tasks running at once; the rest stay queued (the provider's capacity)
        self.cancel_races = False               # a queued task being cancelled has just started: it runs on
        self.end_with: tuple[str, dict | None] = ("succeeded", None)  # or ("failed", error), ("expired", error)
        self.refuse_words = ("forbidden",)     # prompts containing one are refused
        self.expired_links = 0                 # how many result links per task are born expired
        self.fresh_links = True                # each poll of a succeeded task issues a new link
        self.faults: dict[str, deque[Fault]] = {}
        self.deliver: dict[str, Any] = {}      # override what the result really is, e.g. {"resolution": "720p"}
        self.speech: np.ndarray | None = None  # what the clips say (16 kHz mono, tests.conftest `speak`); None: a tone
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
            running = sum(t.status == "running" for t in self.tasks.values())
            if task.status == "queued" and task.polls > self.queued_polls and running < self.run_limit:
                task.status = "running"
            if (task.status == "running" and not self.hold
                    and task.polls > self.queued_polls + self.running_polls):
                self._end(task, *self.end_with)

    def _cancel(self, task: Task) -> bool:
        with self.lock:
            self.cancels += 1
            if task.status != "queued":
                return False
            if self.cancel_races:
                task.status = "running"
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
        return 200, {"Content-Type": "video/mp4"}, clip_bytes(r["ratio"], r["resolution"], r["seconds"], r["audio"],
                                                              self.speech)


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


def is_image_data_url(url: str) -> bool:
    match = re.fullmatch(r"data:image/(png|jpeg|webp);base64,([A-Za-z0-9+/=]+)", url or "")
    if not match:
        return False
    try:
        return len(base64.b64decode(match.group(2), validate=True)) > 0
    except ValueError:
        return False
