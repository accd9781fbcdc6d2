"""Leases: a department's policy may cap how long its deployments live.

A deployment's owners are warned ``warn_days`` before its lease ends (once; an extension clears it), and at
the end it is destroyed. :func:`due` decides, from the deployments and the policy; the queue's periodic task
(:mod:`.jobs`) acts on it: a warning in the audit, or a destroy job.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict

from umc_infra.service.policy import Policy
from umc_infra.service.store import Ownership


class LeaseDue(BaseModel):
    """A deployment whose owners are to be warned, or whose lease has ended."""

    model_config = ConfigDict(frozen=True)

    deployment: str
    department: str
    lease_until: datetime
    kind: Literal["warn", "expire"]


def horizon(policy: Policy, at: datetime) -> datetime:
    """The latest lease end that may be due at ``at`` (the longest warning of any department)."""
    warn = max((d.lease.warn_days for d in policy.departments.values() if d.lease is not None), default=0)
    return at + timedelta(days=warn)


def due(owners: Iterable[Ownership], policy: Policy, at: datetime) -> list[LeaseDue]:
    """What is due at ``at``: ended leases (``expire``), and leases within their warning not yet warned of."""
    found = []
    for owner in owners:
        if owner.lease_until is None:
            continue
        if owner.lease_until <= at:
            kind: Literal["warn", "expire"] | None = "expire"
        else:
            dept = policy.departments.get(owner.department)
            warn_days = dept.lease.warn_days if dept is not None and dept.lease is not None else 0
            soon = owner.lease_until - timedelta(days=warn_days) <= at
            kind = "warn" if soon and not owner.lease_warned else None
        if kind is not None:
            found.append(LeaseDue(deployment=owner.name, department=owner.department,
                                  lease_until=owner.lease_until, kind=kind))  # fmt: skip
    return found
