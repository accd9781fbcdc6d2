"""SSH host keys, pinned per VM in the state backend: whoever answers at a VM's address must prove it is that VM.

The first contact with a VM (or with a VM this run created or replaced) scans its public host keys and
pins them in ``hostkeys/<deployment>/<host>.json``; every later run scans again and compares. A key of a
pinned type that differs, or no key of a pinned type at all, stops the run with :class:`HostKeyChanged`
before anything connects: otherwise whoever answers at the address would get a root session and the
run's secrets. SSH then accepts the pinned keys alone (:func:`known_hosts` gives them as a
``known_hosts`` file). Pins live in the backend every machine shares, so a run on another CI runner
checks against the same keys; :func:`forget` removes them (``destroy`` does, for the whole deployment).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from umc_infra.errors import HostKeyChanged, SshUnreachable, StateBackendError, ToolMissing
from umc_infra.process import find_tool, run
from umc_infra.state.store import StateStore

KEY_TYPES = ("ed25519", "ecdsa", "rsa")
"""The key types asked for, in ``ssh-keyscan -t`` spelling."""
_PREFIX = "hostkeys"
_STEP = "ssh"


class Scan(Protocol):
    """Reads the public host keys ``ip`` presents on ``port``, as ``type base64`` strings."""

    def __call__(self, ip: str, port: int, *, timeout_s: float) -> tuple[str, ...]:
        """The keys, or nothing if the host presented none within ``timeout_s``."""
        ...


class HostKeyPin(BaseModel):
    """The public host keys a VM presented when it was pinned (``hostkeys/<deployment>/<host>.json``)."""

    model_config = ConfigDict(frozen=True)

    host: str
    ip: str
    vm_id: str | None
    """The VM's id in vSphere when known: a different id at the same name is a new VM, pinned anew."""
    keys: tuple[str, ...]
    """``type base64`` (``ssh-ed25519 AAAA...``), one per key type."""
    pinned_at: datetime


def pin_key(deployment: str, host: str) -> str:
    """The state key of a host's pin (host names are case-insensitive; state keys are lower case)."""
    return f"{_PREFIX}/{deployment}/{host.lower()}.json"


def fingerprint(key: str) -> str:
    """``type SHA256:...`` of a ``type base64`` key, as ``ssh-keygen -lf`` shows it."""
    kind, _, blob = key.partition(" ")
    try:
        raw = base64.b64decode(blob, validate=True)
    except binascii.Error:
        raw = blob.encode()
    return f"{kind} SHA256:{base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip('=')}"


def parse_keyscan(output: str) -> tuple[str, ...]:
    """``type base64`` of each key in ``ssh-keyscan`` output (its ``host type base64`` lines), one per type."""
    by_type: dict[str, str] = {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) >= 3 and not line.startswith("#"):
            by_type.setdefault(fields[1], fields[2])
    return tuple(f"{kind} {blob}" for kind, blob in sorted(by_type.items()))


def scan(ip: str, port: int, *, timeout_s: float) -> tuple[str, ...]:
    """The public host keys ``ip`` presents on ``port`` (``ssh-keyscan``); empty if none answered in time.

    Raises:
        ToolMissing: ``ssh-keyscan`` is not installed.

    """
    tool = find_tool("ssh-keyscan")
    if tool is None:
        raise ToolMissing("ssh-keyscan not found; install the OpenSSH client (apt-get install openssh-client)",
                            step=_STEP)  # fmt: skip
    wait = max(1, round(timeout_s))
    result = run(
        [str(tool), "-T", str(wait), "-p", str(port), "-t", ",".join(KEY_TYPES), ip],
        step=_STEP,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        timeout=wait * len(KEY_TYPES) + 10,
        check=False,
    )
    return parse_keyscan(result.stdout)


def known_hosts_lines(ip: str, port: int, keys: Sequence[str]) -> list[str]:
    """``known_hosts`` lines for ``keys`` at ``ip`` (``[ip]:port`` when the port is not 22)."""
    where = ip if port == 22 else f"[{ip}]:{port}"
    return [f"{where} {key}" for key in keys]


def _read(store: StateStore, deployment: str, host: str) -> HostKeyPin | None:
    key = pin_key(deployment, host)
    data = store.get(key)
    if data is None:
        return None
    try:
        return HostKeyPin.model_validate_json(data)
    except ValidationError:
        raise StateBackendError(
            f"the pinned SSH host key of {host} in deployment {deployment!r} ({key}) is unreadable; if the VM is "
            f"the one you expect, forget its pin (umc_infra.ansible.hostkeys.forget(store, {deployment!r}, {host!r})) "
            "and run again",
            step=_STEP,
        ) from None


def _changed(pin: HostKeyPin, presented: tuple[str, ...], *, deployment: str) -> HostKeyChanged | None:
    """The error to raise if ``presented`` does not prove the host is the pinned one."""
    pinned = dict(k.split(" ", 1) for k in pin.keys)
    now = dict(k.split(" ", 1) for k in presented)
    common = sorted(set(pinned) & set(now))
    differing = [kind for kind in common if pinned[kind] != now[kind]]
    if common and not differing:
        return None
    kinds = differing or sorted(pinned)
    old = tuple(fingerprint(f"{kind} {pinned[kind]}") for kind in kinds)
    new = tuple(fingerprint(f"{kind} {now[kind]}") for kind in (differing or sorted(now)))
    what = "a different key" if differing else "no key of a pinned type"
    return HostKeyChanged(
        f"SSH host key of {pin.host} ({pin.ip}) in deployment {deployment!r} changed: it presents {what} "
        f"(pinned {', '.join(old)}; presented {', '.join(new) or 'nothing'}); nothing connected to it. If the VM "
        f"was rebuilt on purpose, forget its pinned key (umc-infra forget-host-key {deployment} {pin.host}, or "
        f"Provisioner.forget_host_keys) and run again; otherwise someone else answers at {pin.ip}: find out who "
        "before any run connects",
        deployment=deployment,
        host=pin.host,
        ip=pin.ip,
        pinned=old,
        presented=new,
    )


def known_hosts(
    store: StateStore,
    deployment: str,
    hosts: Sequence[tuple[str, str, str | None]],
    *,
    recreated: Collection[str],
    port: int = 22,
    timeout_s: float = 10,
    scan: Scan = scan,
) -> str:
    """Check every host's SSH host keys against its pin, pinning where the VM is new; the pinned keys as text.

    A host is pinned (anew) when it has no pin yet, when this run created or replaced its VM (its name
    is in ``recreated``), or when its pin names another VM id than the one known now. Otherwise the keys
    it presents must match the pinned ones (a pin made before the VM id was known is checked, then
    records the id).

    Args:
        store: The state backend.
        deployment: The deployment the hosts belong to.
        hosts: ``(name, ip, vm_id)`` of each host; ``vm_id`` None when unknown.
        recreated: Names of the hosts whose VM this run created or replaced.
        port: The SSH port.
        timeout_s: How long a host may take to present its keys.
        scan: Reads a host's public keys (``ssh-keyscan``; tests pass a fake).

    Returns:
        A ``known_hosts`` file: every host's pinned keys, one ``ip type base64`` line each (``[ip]:port``
        when ``port`` is not 22).

    Raises:
        HostKeyChanged: A host presents keys other than its pinned ones.
        SshUnreachable: A host presented no key within ``timeout_s``.
        StateBackendError: The backend cannot be read or written.

    """
    lines: list[str] = []
    for name, ip, vm_id in hosts:
        presented = scan(ip, port, timeout_s=timeout_s)
        if not presented:
            raise SshUnreachable(
                f"{name} ({ip}) in deployment {deployment!r} presented no SSH host key within {timeout_s:.0f} s "
                f"on port {port}; check that its sshd runs and that the address is its own",
                step=_STEP,
            )
        pin = _read(store, deployment, name)
        new_vm = pin is not None and vm_id is not None and pin.vm_id is not None and pin.vm_id != vm_id
        if pin is None or name in recreated or new_vm:
            pin = HostKeyPin(host=name, ip=ip, vm_id=vm_id, keys=presented, pinned_at=datetime.now(UTC))
            store.put(pin_key(deployment, name), pin.model_dump_json().encode())
        else:
            changed = _changed(pin.model_copy(update={"ip": ip}), presented, deployment=deployment)
            if changed is not None:
                raise changed
            if (pin.ip, pin.vm_id) != (ip, vm_id or pin.vm_id):  # same keys: record where and which VM it is now
                pin = pin.model_copy(update={"ip": ip, "vm_id": vm_id or pin.vm_id})
                store.put(pin_key(deployment, name), pin.model_dump_json().encode())
        lines += known_hosts_lines(ip, port, pin.keys)
    return "".join(f"{line}\n" for line in lines)


def forget(store: StateStore, deployment: str, host: str | None = None) -> list[str]:
    """Remove the pinned host keys of one host, or of the whole deployment; the hosts whose pin was removed.

    The next run then pins whatever the host presents: do this only for a VM rebuilt on purpose, or for
    a deployment that is destroyed.
    """
    if host is not None:
        keys = [pin_key(deployment, host)] if store.get(pin_key(deployment, host)) is not None else []
    else:
        keys = store.list(f"{_PREFIX}/{deployment}")
    for key in keys:
        store.delete(key)
    return [key.rsplit("/", 1)[-1].removesuffix(".json") for key in keys]
