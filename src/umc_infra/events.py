"""Typed progress events, handed to the caller's ``on_event`` as they happen.

Every event of a run carries ``seq``, its number in the run (1, 2, ...: a stream replayed from the
start keeps its order and can resume after the last one seen), and ``at``, when it happened (UTC).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)

    deployment: str
    seq: int = 0
    """The event's number in its run, from 1 (0: not yet numbered)."""
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    """When it happened (UTC)."""


class StepStarted(_Event):
    """A step began (``terraform.web``, ``ansible.base`` ...)."""

    kind: Literal["step_started"] = "step_started"
    step: str


class StepFinished(_Event):
    """A step ended, successfully or not."""

    kind: Literal["step_finished"] = "step_finished"
    step: str
    seconds: float
    ok: bool


class ResourceChanged(_Event):
    """Terraform started or finished changing a resource."""

    kind: Literal["resource"] = "resource"
    module: str
    address: str
    action: str
    """``create``, ``update``, ``replace``, ``delete`` or ``read``."""
    status: Literal["started", "complete", "errored"]


class TaskResult(_Event):
    """An Ansible task started or finished on one host."""

    kind: Literal["task"] = "task"
    playbook: str
    host: str
    task: str
    status: Literal["started", "ok", "changed", "failed", "unreachable", "skipped"]
    seconds: float | None = None
    """How long the task took on the host (None for ``started``)."""


class OutputLine(_Event):
    """A line a tool printed (redacted)."""

    kind: Literal["output"] = "output"
    step: str
    line: str


Event = StepStarted | StepFinished | ResourceChanged | TaskResult | OutputLine
EventCallback = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The default callback: drop events."""


def numbered(on_event: EventCallback) -> EventCallback:
    """``on_event`` for one run: each event numbered in order, and handed over one at a time in that order.

    Events may come from several threads (a plan's check, a converge's early playbooks): ``on_event`` is never
    called by two at once, so a callback that writes a line per event (``-o jsonl``) writes whole lines.
    """
    counter = itertools.count(1)
    lock = threading.RLock()  # a callback may emit an event of its own

    def forward(event: Event) -> None:
        with lock:
            on_event(event.model_copy(update={"seq": next(counter)}))

    return forward
