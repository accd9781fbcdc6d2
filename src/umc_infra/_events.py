"""Typed progress events, handed to the caller's ``on_event`` as they happen."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)

    deployment: str


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


class OutputLine(_Event):
    """A line a tool printed (redacted)."""

    kind: Literal["output"] = "output"
    step: str
    line: str


Event = StepStarted | StepFinished | ResourceChanged | TaskResult | OutputLine
EventCallback = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The default callback: drop events."""
