"""The deployment lock: one run per deployment at a time, across every machine sharing the backend.

The lock is a document ``locks/<deployment>.json`` created atomically in the state backend (S3
``If-None-Match: *`` or ``O_EXCL`` on the local backend). A second run waits up to its timeout, then
fails with :class:`DeploymentLocked` naming the holder and since when. A lock whose holder is gone
(its process ended, or a CI job was killed) stays until someone breaks it explicitly.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict

from umc_infra._errors import DeploymentLocked
from umc_infra._records import Actor
from umc_infra._store import StateStore


class LockInfo(BaseModel):
    """Who holds a deployment's lock."""

    model_config = ConfigDict(frozen=True)

    lock_id: str
    deployment: str
    operation: str
    actor: Actor
    pid: int
    since: datetime

    @property
    def holder(self) -> str:
        """``user@host pid N`` or the CI job."""
        who = f"{self.actor.user}@{self.actor.host} pid {self.pid}"
        return f"{who} (CI job {self.actor.ci_job_id})" if self.actor.ci_job_id else who

    def holder_gone(self) -> bool | None:
        """True if the holder ran on this machine and its process is gone; None if it cannot be told here."""
        if self.actor.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def _key(deployment: str) -> str:
    return f"locks/{deployment}.json"


def holder(store: StateStore, deployment: str) -> LockInfo | None:
    """The current holder of the lock, if any."""
    data = store.get(_key(deployment))
    return LockInfo.model_validate_json(data) if data is not None else None


@contextlib.contextmanager
def locked(
    store: StateStore, deployment: str, *, operation: str, timeout_s: float, poll_s: float = 1.0
) -> Iterator[LockInfo]:
    """Hold the deployment's lock for the block.

    Raises:
        DeploymentLocked: Someone else held it for all of ``timeout_s``.
    """
    info = LockInfo(
        lock_id=uuid.uuid4().hex, deployment=deployment, operation=operation, actor=Actor.from_environment(),
        pid=os.getpid(), since=datetime.now(UTC),
    )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while not store.create(_key(deployment), info.model_dump_json().encode()):
        current = holder(store, deployment)
        if time.monotonic() >= deadline:
            if current is None:
                continue  # released just now: try once more
            gone = " (its process is gone: break the lock if you are sure)" if current.holder_gone() else ""
            raise DeploymentLocked(
                f"deployment {deployment!r} is locked by {current.holder} for {current.operation} since "
                f"{current.since:%Y-%m-%d %H:%M:%S} UTC{gone}; waited {timeout_s:.0f} s",
                holder=current.holder,
                since=current.since,
                step="lock",
            )
        time.sleep(min(poll_s, max(0.05, deadline - time.monotonic())))
    try:
        yield info
    finally:
        current = holder(store, deployment)
        if current is not None and current.lock_id == info.lock_id:
            store.delete(_key(deployment))


def break_lock(store: StateStore, deployment: str) -> LockInfo | None:
    """Remove a (stale) lock; returns who held it."""
    current = holder(store, deployment)
    if current is not None:
        store.delete(_key(deployment))
    return current
