"""The deployment lease: one run per deployment at a time, across every machine sharing the backend.

How it works
    A run holds ``locks/<deployment>.json`` in the state backend: who (user, host, CI job, pid, and the
    identity of its process), for which operation, since when, and until when (``expires_at``). It takes
    the document with a conditional create (S3 ``If-None-Match: *``), renews ``expires_at`` every third of
    the lease's ``ttl_s`` with compare-and-swap (S3 ``If-Match`` on the ETag read last), and releases it
    with compare-and-delete, so it never removes a lease that is no longer its own. Another run waits
    while the holder is alive (polling), and takes the lease over, again by compare-and-swap, when:

    - the holder ran on this machine (same host name, kernel boot id and PID namespace) and its process
      is gone: the pid *and* the start time of the process (field 22 of ``/proc/<pid>/stat``) no longer
      match a live process, so a reused pid cannot pass for the holder. Then the takeover is immediate.
    - or the lease expired: ``expires_at`` plus :data:`CLOCK_SKEW_S` lies in the past. This is how a
      holder on another machine (a lost CI runner) is found dead.

    The new holder's :attr:`Lease.previous` names the run it took over from, so the orchestrator can
    recover what that run left. A holder that fails to renew in time (the backend unreachable until its
    lease expired) or finds its lease taken over sets :attr:`Lease.lost` and calls ``on_lost`` (the
    orchestrator cancels the run); it stops renewing and does not delete the successor's lease.

Compared with the usual designs
    Terraform's S3 backend with a DynamoDB lock table takes a lock with a conditional put and has no
    expiry: a crashed holder's lock stays until someone runs ``terraform force-unlock`` (the old lock
    here did the same). The DynamoDB Lock Client (AWS) uses a lease with a heartbeat: the holder rewrites
    the lock item with a new record version number every heartbeat period (well below the lease
    duration); a waiter that sees the same record version for a whole lease duration takes the lock
    over. This module follows the lease-and-heartbeat design (lease ``ttl_s``, heartbeat ``ttl_s / 3``,
    takeover once the lease passes without a heartbeat), but measures the expiry with a wall-clock
    ``expires_at`` in the document, so that ``umc-infra unlock`` and a waiter that has just arrived can
    tell an expired lease at a glance; and it adds the exact same-machine liveness check.

What the clock-skew margin assumes
    ``expires_at`` is written with the holder's clock and compared with the reader's. The holder treats
    its lease as lost once ``ttl_s`` passed on its own monotonic clock since it sent its last successful
    renewal; others take over only ``CLOCK_SKEW_S`` after ``expires_at`` by their wall clock. The holder
    therefore always knows it lost the lease before anyone takes it over, provided the clocks of the
    machines sharing the backend differ by less than :data:`CLOCK_SKEW_S` (NTP keeps them within
    milliseconds) and a holder's clock does not jump. A holder paused for longer than the lease (a
    suspended VM) finds out at its next renewal, which compare-and-swap refuses.

A corrupt lease document is never guessed at: it raises :class:`StateBackendError` naming the
document, and only ``break_lock(..., force=True)`` (``umc-infra unlock --force``) removes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict

from umc_infra.errors import DeploymentLocked, ParamProblem, SettingsError, UmcInfraError
from umc_infra.process_identity import boot_id, is_gone, pid_namespace, process_start
from umc_infra.state.records import Actor
from umc_infra.state.store import StateStore, parse_document

CLOCK_SKEW_S = 5.0
"""How far apart the clocks of machines sharing the backend may be (see the module docstring)."""

_log = logging.getLogger("umc_infra")


class LockInfo(BaseModel):
    """Who holds a deployment's lease, and until when."""

    model_config = ConfigDict(frozen=True)

    lock_id: str
    deployment: str
    operation: str
    actor: Actor
    pid: int
    since: datetime
    expires_at: datetime
    """Renewed every ``ttl_s / 3`` while the holder runs."""
    ttl_s: float
    boot_id: str | None = None
    """The holder's kernel boot id (Linux); with ``pid_namespace`` and ``process_start`` it names one process."""
    pid_namespace: str | None = None
    process_start: int | None = None
    """Start time of the holder's process in clock ticks after boot (field 22 of ``/proc/<pid>/stat``)."""

    @property
    def holder(self) -> str:
        """``user@host pid N`` or the CI job."""
        who = f"{self.actor.user}@{self.actor.host} pid {self.pid}"
        return f"{who} (CI job {self.actor.ci_job_id})" if self.actor.ci_job_id else who

    def holder_gone(self) -> bool | None:
        """True if the holder's process is gone, False if it lives; None if that cannot be told from here.

        Exact on the holder's own machine (same host name, boot and PID namespace): a reused pid has
        another start time. None elsewhere: another machine, or a document without the process's identity.
        """
        return is_gone(
            self.pid, start=self.process_start, host=self.actor.host, boot=self.boot_id, namespace=self.pid_namespace
        )

    def expired(self, *, now: datetime | None = None) -> bool:
        """The lease ran out: ``expires_at`` plus the clock-skew margin is past."""
        now = now or datetime.now(UTC)
        return now > self.expires_at + timedelta(seconds=CLOCK_SKEW_S)

    def stale(self) -> bool:
        """Its holder is gone or its lease expired: another run may take it over."""
        return self.holder_gone() is True or self.expired()


def _key(deployment: str) -> str:
    return f"locks/{deployment}.json"


def _parse(data: bytes, deployment: str) -> LockInfo:
    return parse_document(
        LockInfo, data, key=_key(deployment), step="lock",
        fix=f"once no run of {deployment!r} is going on, remove it with `umc-infra unlock --force {deployment}`",
    )  # fmt: skip


def holder(store: StateStore, deployment: str) -> LockInfo | None:
    """The current holder of the deployment's lease, if any (expired or not).

    Raises:
        StateBackendError: The lease document is corrupt, or the backend cannot be read.
    """
    data = store.get(_key(deployment))
    return _parse(data, deployment) if data is not None else None


def _written(store: StateStore, key: str, data: bytes) -> str | None:
    """The version of ``key`` if it holds exactly ``data``.

    A conditional write whose reply was lost is retried by the client and then refused (it already
    happened); the document is ours all the same. ``data`` carries a unique id and a fresh time, so it
    cannot be someone else's.
    """
    found = store.get_versioned(key)
    return found.version if found is not None and found.data == data else None


class Lease:
    """A held deployment lease, renewed in the background until its block ends.

    Attributes:
        previous: The holder this run took the lease over from (its process died or its lease expired);
            the run should recover what that one left. None if the deployment was free.
        lost: Set when the lease is no longer this run's: it was taken over or broken, or it expired
            while the backend did not answer. The run must stop (``on_lost`` is called then, once).
    """

    def __init__(
        self,
        store: StateStore,
        info: LockInfo,
        *,
        version: str,
        valid_until: float,
        previous: LockInfo | None,
        on_lost: Callable[[], None] | None,
    ) -> None:
        self._store = store
        self._key = _key(info.deployment)
        self._info = info
        self._version = version
        self._valid_until = valid_until
        self.previous = previous
        self.lost = threading.Event()
        self._on_lost = on_lost
        self._changed = threading.Condition()
        self._stopping = False
        self._threads = [
            threading.Thread(target=target, name=f"umc-lease-{name}-{info.deployment}", daemon=True)
            for name, target in (("renew", self._renew), ("watch", self._watch))
        ]

    def __repr__(self) -> str:
        return f"Lease({self.info.deployment!r}, holder={self.info.holder!r}, lost={self.lost.is_set()})"

    @property
    def info(self) -> LockInfo:
        """The lease as last written (its ``expires_at`` moves on with each renewal)."""
        with self._changed:
            return self._info

    def _start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _renew(self) -> None:
        period = self._info.ttl_s / 3
        due = time.monotonic() + period
        while True:
            with self._changed:
                while not self._stopping and not self.lost.is_set() and (wait := due - time.monotonic()) > 0:
                    self._changed.wait(wait)
                if self._stopping or self.lost.is_set():
                    return
                info, version = self._info, self._version
            sent = time.monotonic()
            due = sent + period
            renewed = info.model_copy(update={"expires_at": datetime.now(UTC) + timedelta(seconds=info.ttl_s)})
            data = renewed.model_dump_json().encode()
            try:
                new = self._store.replace(self._key, data, version=version) or _written(self._store, self._key, data)
            except Exception as exc:  # the thread must live on: retried at the next tick
                reason = str(exc) if isinstance(exc, UmcInfraError) else type(exc).__name__
                _log.warning(
                    "could not renew the lease of %s (retrying in %.0f s): %s", info.deployment, period, reason
                )
                continue
            if new is None:
                self._lose("it was taken over or broken by someone else")
                return
            with self._changed:
                self._info, self._version, self._valid_until = renewed, new, sent + info.ttl_s
                self._changed.notify_all()

    def _watch(self) -> None:
        """Declare the lease lost the moment it expires unrenewed, even while a renewal hangs on the backend."""
        while True:
            with self._changed:
                while (
                    not self._stopping and not self.lost.is_set() and (left := self._valid_until - time.monotonic()) > 0
                ):
                    self._changed.wait(left)
                if self._stopping or self.lost.is_set():
                    return
            self._lose("it expired before it could be renewed (the state backend did not answer)", expired=True)

    def _lose(self, why: str, *, expired: bool = False) -> None:
        with self._changed:
            if self.lost.is_set() or self._stopping:
                return
            if expired and time.monotonic() < self._valid_until:
                return  # renewed just now
            self.lost.set()
            self._changed.notify_all()
        _log.warning("lost the lease of deployment %s: %s; stopping the run", self._info.deployment, why)
        if self._on_lost is not None:
            try:
                self._on_lost()
            except Exception:
                _log.exception("on_lost of the lease of %s failed", self._info.deployment)

    def _release(self) -> None:
        """Stop renewing, then delete the lease if it is still this run's (compare-and-delete)."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join()
        with self._changed:
            info, version = self._info, self._version
        try:
            if not self._store.delete_if(self._key, version=version):
                _log.info("the lease of %s is someone else's now: left in place", info.deployment)
        except UmcInfraError as exc:
            _log.warning(
                "could not release the lease of %s (%s); it expires by itself at %s UTC",
                info.deployment, exc, f"{info.expires_at:%H:%M:%S}",
            )  # fmt: skip


def _identity(*, lock_id: str, deployment: str, operation: str, ttl_s: float) -> LockInfo:
    now = datetime.now(UTC)
    pid = os.getpid()
    return LockInfo(
        lock_id=lock_id, deployment=deployment, operation=operation, actor=Actor.from_environment(), pid=pid,
        since=now, expires_at=now + timedelta(seconds=ttl_s), ttl_s=ttl_s, boot_id=boot_id(),
        pid_namespace=pid_namespace(), process_start=process_start(pid),
    )  # fmt: skip


def _acquire(
    store: StateStore, deployment: str, *, operation: str, timeout_s: float, ttl_s: float, poll_s: float
) -> tuple[LockInfo, str, float, LockInfo | None]:
    """Take the lease: (what was written, its version, monotonic time it is valid until, previous holder)."""
    key = _key(deployment)
    lock_id = uuid.uuid4().hex
    deadline = time.monotonic() + timeout_s
    while True:
        sent = time.monotonic()
        mine = _identity(lock_id=lock_id, deployment=deployment, operation=operation, ttl_s=ttl_s)
        data = mine.model_dump_json().encode()
        version = store.create(key, data)
        if version is not None:
            return mine, version, sent + ttl_s, None
        found = store.get_versioned(key)
        if found is None:
            continue  # released just now: try again
        current = _parse(found.data, deployment)
        if current.lock_id == lock_id:  # our create went through; only its reply was lost
            left = (current.expires_at - datetime.now(UTC)).total_seconds()
            return current, found.version, time.monotonic() + left, None
        if current.stale():
            version = store.replace(key, data, version=found.version) or _written(store, key, data)
            if version is not None:
                _log.warning(
                    "took over the lease of %s from %s (%s)", deployment, current.holder,
                    "its process is gone" if current.holder_gone() else "its lease expired",
                )  # fmt: skip
                return mine, version, sent + ttl_s, current
            continue  # someone else took it over, or it was renewed: look again
        if time.monotonic() >= deadline:
            raise DeploymentLocked(
                f"deployment {deployment!r} is locked by {current.holder} for {current.operation} since "
                f"{current.since:%Y-%m-%d %H:%M:%S} UTC; its lease expires at {current.expires_at:%H:%M:%S} UTC "
                f"unless renewed (its holder renews it while it runs); waited {timeout_s:.0f} s. Run again later; if "
                f"that run is gone for sure, `umc-infra unlock --force {deployment}` breaks its lease",
                holder=current.holder,
                since=current.since,
                step="lock",
            )
        time.sleep(min(poll_s, max(0.05, deadline - time.monotonic())))


@contextlib.contextmanager
def locked(
    store: StateStore,
    deployment: str,
    *,
    operation: str,
    timeout_s: float,
    ttl_s: float,
    poll_s: float = 1.0,
    on_lost: Callable[[], None] | None = None,
) -> Iterator[Lease]:
    """Hold the deployment's lease for the block, renewed every ``ttl_s / 3`` in the background.

    Args:
        store: The state backend.
        deployment: The deployment's name.
        operation: What the run does (``provision``, ``destroy`` ...), shown to runs that wait.
        timeout_s: How long to wait for a live holder.
        ttl_s: How long the lease lives without renewal: a run that dies frees the deployment this long
            (plus :data:`CLOCK_SKEW_S`) after its last renewal; at once if it ran on this machine.
        poll_s: How often a waiting run looks again.
        on_lost: Called once (from a background thread) if the lease is lost while the block runs.

    Raises:
        DeploymentLocked: A live holder kept it for all of ``timeout_s``.
        StateBackendError: The lease document is corrupt, or the backend cannot be used.
        SettingsError: ``ttl_s`` is not positive.
    """
    if ttl_s <= 0:
        problem = ParamProblem(field="ttl_s (UMC_LEASE_TTL)", message=f"{ttl_s} is not positive", allowed="seconds > 0")
        raise SettingsError([problem])
    info, version, valid_until, previous = _acquire(
        store, deployment, operation=operation, timeout_s=timeout_s, ttl_s=ttl_s, poll_s=poll_s
    )
    lease = Lease(store, info, version=version, valid_until=valid_until, previous=previous, on_lost=on_lost)
    lease._start()
    try:
        yield lease
    finally:
        lease._release()


def break_lock(store: StateStore, deployment: str, *, force: bool = False) -> LockInfo | None:
    """Remove the lease of a run that is gone (its process ended, or its lease expired); returns who held it.

    Args:
        store: The state backend.
        deployment: The deployment's name.
        force: Remove it even if its holder looks alive (that run then stops at its next renewal), and
            remove a corrupt lease document (then None is returned).

    Raises:
        DeploymentLocked: The holder looks alive and ``force`` is not set.
        StateBackendError: The lease document is corrupt and ``force`` is not set.
    """
    key = _key(deployment)
    while True:
        found = store.get_versioned(key)
        if found is None:
            return None
        try:
            current = _parse(found.data, deployment)
        except UmcInfraError:
            if not force:
                raise
            if store.delete_if(key, version=found.version):
                _log.warning("removed the corrupt lease document %s", key)
                return None
            continue
        if not force and not current.stale():
            raise DeploymentLocked(
                f"the lease of {deployment!r} is held by {current.holder} for {current.operation} since "
                f"{current.since:%Y-%m-%d %H:%M:%S} UTC and its holder looks alive (it renews the lease, which "
                f"expires at {current.expires_at:%H:%M:%S} UTC); breaking it would let two runs change {deployment!r} "
                f"at once. If that run is gone for sure, break it anyway with force=True (`umc-infra unlock --force "
                f"{deployment}`); the holder then stops at its next renewal",
                holder=current.holder,
                since=current.since,
                step="lock",
            )
        if store.delete_if(key, version=found.version):
            return current
        # renewed or taken over meanwhile: look again
