"""The rules a run decides by, as pure functions.

What params it uses, whether a change may go ahead, whether a reviewed plan still holds, and where a
retry resumes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from umc_infra.blueprint.model import Blueprint
from umc_infra.errors import DestroyNotAllowed, PlanChanged
from umc_infra.params import MASK
from umc_infra.run.results import ParamChange, PlanResult
from umc_infra.state.records import DeploymentRecord, RunRecord
from umc_infra.terraform.plan import ChangeCounts, ResourceChange


def params_to_use(
    blueprint: Blueprint, given: Mapping[str, Any], record: DeploymentRecord | None, *, reset: bool
) -> dict[str, Any]:
    """The params of a run: those given, over those the deployment has now (unless ``reset``).

    A param left out of an update keeps its value, rather than going back to its default (which would scale
    down or shrink by omission). Secret params are never recorded: they must be given again. Recorded params
    the blueprint no longer has are dropped.
    """
    if reset or record is None or record.state == "destroyed":
        return dict(given)
    kept = {k: v for k, v in record.params.items() if k in blueprint.params and v != MASK}
    return kept | dict(given)


def param_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, ParamChange]:
    """Params whose (masked) value differs between what the deployment has and what the run uses."""
    return {
        name: ParamChange(before=before.get(name), after=after.get(name))
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    }


def params_digest(params: Mapping[str, Any]) -> str:
    """A short digest of (masked) params: tells whether a retry asks for the same thing as the failed run."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(params: Mapping[str, Any], resources: Sequence[ResourceChange], deferred: Sequence[str] = ()) -> str:
    """Identifies a plan: its params, every resource change and the modules it could not plan yet."""
    data = {"params": params, "resources": [r.model_dump(mode="json") for r in resources], "deferred": list(deferred)}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:32]


def check_destroys(
    found: Sequence[ResourceChange], *, deployment: str, allow_destroy: bool, applied: Sequence[str]
) -> None:
    """Refuse a change that deletes or replaces resources, unless allowed.

    Raises:
        DestroyNotAllowed: Lists them, and says which modules (if any) this run already applied.
    """
    doomed = [f"{r.module}: {r.address} ({r.action})" for r in found if r.action in ("delete", "replace")]
    if doomed and not allow_destroy:
        raise DestroyNotAllowed(
            f"this change would delete or replace {len(doomed)} resource(s) in deployment {deployment!r}: "
            + ", ".join(doomed)
            + f"; {_applied(applied)} Pass RunOptions(allow_destroy=True) (--allow-destroy) if that is intended.",
            resources=doomed,
            step="plan",
        )


def check_reviewed(
    reviewed: PlanResult,
    *,
    deployment: str,
    params: Mapping[str, Any],
    module: str,
    found: Sequence[ResourceChange],
    applied: Sequence[str],
) -> None:
    """Refuse to apply ``module`` unless its changes now are the reviewed ones (and the params too).

    Raises:
        PlanChanged: What differs, and which modules this run already applied (nothing else is applied).
    """
    why = ""
    if reviewed.deployment != deployment:
        why = f"the plan was made for deployment {reviewed.deployment!r}"
    elif dict(reviewed.params) != dict(params):
        why = "the params differ from the reviewed ones"
    elif module in reviewed.deferred:
        why = (f"module {module!r} could not be planned when the plan was made (it reads outputs that only the "
               "apply of an earlier module makes known); its changes were never reviewed")  # fmt: skip
    else:
        before = [r for r in reviewed.resources if r.module == module]
        if [r.model_dump() for r in before] != [r.model_dump() for r in found]:
            was = {(r.address, r.action) for r in before}
            now = {(r.address, r.action) for r in found}
            differs = sorted(was ^ now)
            why = (f"module {module!r}: " + (", ".join(f"{a} {c}" for a, c in differs) if differs
                   else "the same resources, with other attribute changes"))  # fmt: skip
    if why:
        raise PlanChanged(
            f"deployment {deployment!r} changed since the plan was reviewed ({why}); {_applied(applied)} "
            "Plan and review again.",
            step="plan",
        )


def _applied(applied: Sequence[str]) -> str:
    if not applied:
        return "nothing was applied."
    return f"module(s) {', '.join(repr(m) for m in applied)} were applied before this; nothing else was applied."


def resume_point(
    previous: RunRecord | None,
    *,
    retry: str,
    playbooks: Sequence[str],
    changes: Mapping[str, ChangeCounts],
    version: str,
    digest: str,
) -> tuple[str, tuple[str, ...]] | None:
    """Where a retry of failed hosts starts: the failed playbook and its failed hosts, or None (run everything).

    Only after a run that failed in a playbook on some hosts, asked for the same params and blueprint version,
    and when Terraform changes nothing now.
    """
    if (
        retry != "failed" or previous is None or previous.outcome != "failed" or not previous.failed_hosts
        or not (previous.failed_step or "").startswith("ansible.")
        or any(c != ChangeCounts() for c in changes.values())
        or previous.blueprint_version != version or previous.params_digest != digest
    ):  # fmt: skip
        return None
    playbook = (previous.failed_step or "").removeprefix("ansible.")
    if playbook not in playbooks:
        return None
    return playbook, previous.failed_hosts
