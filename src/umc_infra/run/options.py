"""How a run goes: every option of plan, provision, destroy and drift, declared once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from umc_infra.run.results import PlanResult


class RunOptions(BaseModel):
    """Options of a run; the defaults are what a run does unless told otherwise.

    Example:
        >>> from umc_infra import RunOptions
        >>> RunOptions(allow_destroy=True, lock_timeout_s=60)  # doctest: +ELLIPSIS
        RunOptions(plan=None, allow_destroy=True, ...)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    plan: PlanResult | None = None
    """provision: a reviewed plan; apply exactly that, or refuse with :class:`PlanChanged`."""
    allow_destroy: bool = False
    """provision: let the change delete or replace VMs (scale down, a replacing change)."""
    on_failure: Literal["keep", "destroy"] = "keep"
    """provision: ``destroy`` rolls back a brand-new deployment that fails; ``keep`` keeps what exists."""
    retry: Literal["failed", "all"] = "failed"
    """provision: after a run whose playbook failed on some hosts, ``failed`` resumes at that playbook on those
    hosts (when the params, the blueprint version and Terraform's changes are the same); ``all`` runs
    everything."""
    reset: bool = False
    """plan, provision: start from the blueprint's defaults, not from the params the deployment has now."""
    lock_timeout_s: float | None = Field(default=None, ge=0)
    """Every operation: how long to wait for another run on the deployment (default ``UMC_LOCK_TIMEOUT``)."""
    requested_by: str | None = None
    """provision, destroy: who asked for the run (a portal user, the CI user), in the run's record beside who ran it
    (:class:`~umc_infra.state.records.Actor`). plan and drift record nothing: they check it and ignore it. Checked
    before anything happens (:data:`~umc_infra.params.REQUESTED_BY`): a bad one is a ``ParamsError``."""
    ticket: str | None = None
    """provision, destroy: the ticket the run was asked for in (``INC0012345``), recorded like ``requested_by``
    (:data:`~umc_infra.params.TICKET`)."""


def _resolve_forward_refs() -> None:
    from umc_infra.run.results import PlanResult

    RunOptions.model_rebuild(_types_namespace={"PlanResult": PlanResult})


_resolve_forward_refs()
