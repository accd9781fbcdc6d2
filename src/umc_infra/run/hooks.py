"""Hooks: Python callables a blueprint names, run before and after the steps of a run.

A hook is registered by an installed package under an entry point in group ``umc_infra.hooks``::

    [project.entry-points."umc_infra.hooks"]
    cmdb-register = "umc_cmdb.hooks:register"

and named in a blueprint::

    hooks:
      - {call: cmdb-register, at: after_provision}

It is called with one :class:`HookContext` (params without secrets, addresses, Terraform outputs, hosts).
To stop the run it raises; the run then fails with :class:`HookError`, which names the hook. Points:
``before_terraform`` (addresses claimed, nothing applied), ``after_terraform`` (VMs exist, hosts known),
``before_ansible``, ``after_ansible``, ``after_provision`` (everything done; the record is written next),
``before_destroy`` and ``after_destroy``.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from umc_infra.ansible.inventory import Host
from umc_infra.blueprint.model import HOOK_GROUP, HookPoint
from umc_infra.errors import HookError


class HookContext(BaseModel):
    """What a hook is told: never a secret (secret params and sensitive outputs are ``***``)."""

    model_config = ConfigDict(frozen=True)

    at: HookPoint
    action: Literal["provision", "destroy"]
    deployment: str
    blueprint: str
    version: str
    params: dict[str, Any]
    addresses: dict[str, tuple[str, ...]]
    """IPv4 addresses claimed per module."""
    outputs: dict[str, dict[str, Any]]
    """Terraform outputs per module (those known at this point)."""
    hosts: tuple[Host, ...]
    """The deployment's hosts (known from ``after_terraform`` on)."""


Hook = Callable[[HookContext], object]


def load_hook(name: str, at: str) -> Hook:
    """The callable registered as ``name`` in group ``umc_infra.hooks``.

    Raises:
        HookError: It is not installed, or does not load.
    """
    found = entry_points(group=HOOK_GROUP, name=name)
    if not found:
        raise HookError(f"hook {name!r} is not installed (no entry point {name!r} in group {HOOK_GROUP!r})",
                        hook=name, at=at)  # fmt: skip
    try:
        hook: Hook = next(iter(found)).load()
    except Exception as exc:  # a third-party package's import can raise anything
        raise HookError(f"hook {name!r} does not load: {type(exc).__name__}: {exc}", hook=name, at=at) from None
    return hook


def call(name: str, context: HookContext, redact: Callable[[str], str]) -> None:
    """Run one hook; whatever it raises stops the run as a HookError (redacted)."""
    hook = load_hook(name, context.at)
    try:
        hook(context)
    except Exception as exc:  # a hook may raise anything: it is how it stops the run
        raise HookError(
            f"hook {name!r} at {context.at} stopped the run of deployment {context.deployment!r}: "
            f"{type(exc).__name__}: {redact(str(exc))}",
            hook=name,
            at=context.at,
        ) from None
