"""What every provider's task API looks like to the backend: create, get, cancel.

Provider statuses are normalised to ModelArk's words (queued, running, succeeded, failed,
expired, cancelled); a failed task carries its classified error (a refusal or not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .http import ProviderError
from .request import ApiRequest

TERMINAL = ("succeeded", "failed", "expired", "cancelled")


@dataclass
class TaskState:
    status: str
    video_url: str | None = None           # succeeded: the result link (a presigned URL: never stored)
    usage: dict[str, Any] = field(default_factory=dict)
    error: ProviderError | None = None     # failed/expired: why
    echo: dict[str, Any] = field(default_factory=dict)  # what the provider says it rendered (ratio, seconds, ...)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class TaskApi(Protocol):
    """One provider's task API. `urls` are the per-task URLs a provider hands out at create
    (fal's status/response/cancel URLs; none for ModelArk), kept in the task record."""

    def create(self, request: ApiRequest) -> tuple[str, dict[str, str]]:
        """Create a task for `request`: (task id, urls)."""

    def get(self, task_id: str, urls: dict[str, str]) -> TaskState:
        """The task's status now (a succeeded task with a result link, fresh if the provider makes one)."""

    def cancel(self, task_id: str, urls: dict[str, str]) -> bool:
        """Ask the provider to cancel the task; True if it will not run (it was still queued)."""
