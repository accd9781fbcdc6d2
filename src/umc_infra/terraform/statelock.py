"""Terraform's own state lock on the S3 backend (a DynamoDB item), seen from umc_infra.

Terraform locks a module's state while it plans or applies, and releases the lock when it stops,
also on Ctrl-C. Killed outright, it leaves the lock behind, and every later run fails with "Error
acquiring the state lock" until someone runs ``terraform force-unlock`` with the lock's id.

So while a state-locking command runs, :class:`LockWatcher` reads the lock item and hands its id to the
run's journal (the deployment record). The next run on the deployment, finding that the run died,
releases exactly the locks that run recorded, and any lock that the same Terraform identity took while
that run was running (a lock taken in the moment before the watcher saw it).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from umc_infra.settings import Settings
from umc_infra.state.aws import AwsClient, dynamodb
from umc_infra.terraform.backend import state_key

POLL_S = 0.25


class StateLock(BaseModel):
    """A Terraform state lock: its id, who holds it (``user@host``), since when, and for what."""

    model_config = ConfigDict(frozen=True)

    id: str
    who: str
    created: datetime | None
    operation: str = ""


def terraform_user() -> str:
    """The user name of this process: the Terraform it starts gets it as ``USER`` and names it in its locks."""
    return pwd.getpwuid(os.getuid()).pw_name


def terraform_who() -> str:
    """The ``Who`` Terraform writes into the locks it takes from this process (``user@host``)."""
    return f"{terraform_user()}@{socket.gethostname()}"


def applies(settings: Settings) -> bool:
    """Whether Terraform's state lock lives in DynamoDB (the S3 backend with a lock table)."""
    return settings.backend == "s3" and bool(settings.lock_table) and bool(settings.state_bucket)


def read(settings: Settings, deployment: str, module: str, *, client: AwsClient | None = None) -> StateLock | None:
    """The lock on a module's state now, or None."""
    client = client or AwsClient(settings, "dynamodb")
    lock_id = f"{settings.state_bucket}/{state_key(deployment, module)}"
    item = dynamodb(client, "GetItem", {"TableName": settings.lock_table, "Key": {"LockID": {"S": lock_id}},
                                        "ConsistentRead": True})  # fmt: skip
    info = item.get("Item", {}).get("Info", {}).get("S")
    if not info:
        return None
    try:
        found = json.loads(info)
    except ValueError:  # not Terraform's JSON: a lock all the same, of no one known
        found = None
    data: dict[str, Any] = found if isinstance(found, dict) else {}
    try:
        created: datetime | None = datetime.fromisoformat(str(data.get("Created", "")).replace("Z", "+00:00"))
    except ValueError:
        created = None
    return StateLock(
        id=str(data.get("ID", "")), who=str(data.get("Who", "")), created=created,
        operation=str(data.get("Operation", "")),
    )  # fmt: skip


class LockWatcher:
    """Reports the id of the state lock a Terraform command takes, while the command runs."""

    def __init__(self, settings: Settings, deployment: str, module: str, on_lock: Callable[[str], None]) -> None:
        self._settings = settings
        self._deployment = deployment
        self._module = module
        self._on_lock = on_lock
        self._stop = threading.Event()

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Watch for the block's duration (a daemon thread; errors only end the watch)."""
        started = datetime.now(UTC)
        thread = threading.Thread(target=self._watch, args=(started,), daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join(timeout=5)

    def _watch(self, started: datetime) -> None:
        who = terraform_who()
        try:
            client = AwsClient(self._settings, "dynamodb")
            while not self._stop.wait(POLL_S):
                lock = read(self._settings, self._deployment, self._module, client=client)
                if lock is not None and lock.who == who and (lock.created is None or lock.created >= started):
                    self._on_lock(lock.id)
                    return
        except Exception:  # the watch is best effort: the recovery also matches who and when
            return


def is_stale(lock: StateLock, *, recorded: tuple[str, ...], who: str | None, since: datetime, in_flight: bool) -> bool:
    """Whether a lock was left by a run that died.

    Its id was recorded by that run; or that run had Terraform working on the module (``in_flight``) and the
    lock's holder and time match it (a lock taken in the moment before the watcher saw it). A lock matched by
    holder and time alone, on a module the dead run was not working on, is someone else's.
    """
    if lock.id in recorded:
        return True
    return (in_flight and who is not None and lock.who == who and lock.created is not None
            and lock.created >= since)  # fmt: skip
