"""HTTP to an API provider: the key from the environment, waits on 429/5xx, classified errors.

- The key is read from the environment variable the spec names at each call, registered with the
  catalog's secret filter and put in the Authorization header: never into an attribute, a log
  line, an error message or a pickled object. It is sent only to the spec's own origin; result
  links (presigned CDN URLs) are fetched with a client that carries no key.
- 429, 5xx and transport errors are waited out with exponential backoff (a longer Retry-After
  wins) for up to `retry_budget_s`, then raised as retryable. Every other error status is
  classified by the provider client (refusal, invalid request, auth, not found) and raised at once.
- httpx logs each request URL at INFO; a filter strips their query strings (presigned result
  links carry their signature there).
"""

from __future__ import annotations

import logging
import os
import time
from email.utils import parsedate_to_datetime
from typing import Any, Callable
from urllib.parse import urlsplit

import httpx

from catalog.redact import SECRET_FILTER, get_logger, redact_url, scrub

from .spec import ProviderSpec, check_url

log = get_logger(__name__)

# Error kinds: the first two are worth waiting for, the rest are answers.
RATE_LIMITED = "RateLimited"
UNAVAILABLE = "ProviderUnavailable"
REFUSED = "ProviderRefused"          # content policy: the same request will be refused again
INVALID = "InvalidRequest"           # the provider rejects a field: fix the request, not the weather
AUTH = "ProviderAuth"                # missing, wrong or unfunded key
NOT_FOUND = "ProviderTaskNotFound"
TASK_FAILED = "ProviderTaskFailed"   # the provider's task ended in failure (not a refusal): a new task may work
TASK_EXPIRED = "ProviderTaskExpired"  # the task waited past the provider's execution limit
LINK_EXPIRED = "ResultLinkExpired"
PROTOCOL = "ProviderProtocol"        # an answer we cannot read


class ProviderError(Exception):
    def __init__(self, kind: str, message: str, *, status: int | None = None, code: str | None = None,
                 retry_after: float | None = None):
        super().__init__(scrub(message)[:1000])
        self.kind, self.status, self.code, self.retry_after = kind, status, code, retry_after


class _RedactUrlArgs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_url(str(a)) if isinstance(a, httpx.URL) or (isinstance(a, str) and "://" in a)
                                else a for a in record.args)
        return True


for _name in ("httpx", "httpcore.http11", "httpcore.connection"):
    get_logger(_name)
logging.getLogger("httpx").addFilter(_RedactUrlArgs())


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def body_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:500]


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


class ProviderHttp:
    """JSON calls to one provider (`call`) and result downloads (`download`)."""

    def __init__(self, spec: ProviderSpec, auth_scheme: str,
                 classify: Callable[[int, Any], ProviderError], sleep: Callable[[float], None] = time.sleep):
        self.spec, self.auth_scheme, self.classify, self.sleep = spec, auth_scheme, classify, sleep
        self._api = httpx.Client(timeout=spec.request_timeout_s, follow_redirects=False)
        self._files = httpx.Client(timeout=spec.request_timeout_s, follow_redirects=True)

    def _auth(self) -> dict[str, str]:
        key = os.environ.get(self.spec.api_key_env, "").strip()
        if not key:
            raise ProviderError(AUTH, f"{self.spec.api_key_env} is not set: the {self.spec.name} key comes "
                                      "from the environment of the process that renders")
        SECRET_FILTER.register({key})
        return {"Authorization": f"{self.auth_scheme} {key}"}

    def call(self, method: str, url: str, *, json: Any = None, params: dict | None = None) -> Any:
        """Send one JSON request to the provider (only to its own origin) and return the JSON answer."""
        if _origin(url) != _origin(self.spec.base_url):
            raise ProviderError(PROTOCOL, f"{self.spec.name} answered with a URL on another host "
                                          f"({redact_url(url)}); the key is only sent to {self.spec.base_url}")

        def send() -> httpx.Response:
            return self._api.request(method, url, json=json, params=params, headers=self._auth())

        response = self._with_retries(send, f"{method} {redact_url(url)}")
        if response.status_code >= 400:
            raise self.classify(response.status_code, body_of(response))
        return body_of(response)

    def download(self, url: str, path: str) -> None:
        """Stream a result link (no key sent) into `path`. An expired or gone link raises
        LINK_EXPIRED (the caller asks the provider for a fresh one)."""
        try:
            check_url(url, "result link")
        except ValueError as exc:
            raise ProviderError(PROTOCOL, str(exc)) from None

        def send() -> httpx.Response:
            written = 0
            with self._files.stream("GET", url) as response:
                if response.status_code >= 400:
                    response.read()
                    return response
                with open(path, "wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        written += len(chunk)
                        if written > self.spec.max_result_bytes:
                            raise ProviderError(PROTOCOL, f"result is larger than {self.spec.max_result_bytes} bytes")
                        out.write(chunk)
                return response

        response = self._with_retries(send, f"download {redact_url(url)}")
        if response.status_code in (401, 403, 404, 410):
            raise ProviderError(LINK_EXPIRED, f"result link answered {response.status_code} (expired or gone)",
                                status=response.status_code)
        if response.status_code >= 400:
            raise ProviderError(PROTOCOL, f"result link answered {response.status_code}", status=response.status_code)

    def _with_retries(self, send: Callable[[], httpx.Response], what: str) -> httpx.Response:
        """`send()` until it is not a 429, a 5xx or a transport error, or the budget is spent."""
        spec = self.spec
        give_up = time.monotonic() + spec.retry_budget_s
        delay = spec.retry_initial_s
        while True:
            try:
                response = send()
            except httpx.TransportError as exc:
                error = ProviderError(UNAVAILABLE, f"{spec.name} unreachable ({type(exc).__name__}) on {what}")
            else:
                status = response.status_code
                # fal marks errors that a retry cannot fix (X-Fal-Retryable: false)
                if status != 429 and status < 500 or response.headers.get("x-fal-retryable") == "false":
                    return response
                error = ProviderError(RATE_LIMITED if status == 429 else UNAVAILABLE,
                                      f"{spec.name} answered {status} on {what}: {body_of(response)}", status=status,
                                      retry_after=retry_after_seconds(response.headers.get("retry-after")))
            wait = max(delay, error.retry_after or 0.0)
            if time.monotonic() + wait > give_up:
                raise error
            log.info("%s; retrying in %.1fs", error, wait)
            self.sleep(wait)
            delay = min(delay * 2, spec.retry_max_s)
