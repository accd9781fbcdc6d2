"""``umc-infra plan``, ``provision``, ``destroy`` and ``drift``: a deployment's lifecycle, with live progress."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import typer
from rich.table import Table

from umc_infra.cli.common import (
    DeploymentOption,
    LockTimeoutOption,
    Output,
    OutputOption,
    ParamOption,
    ParamsFileOption,
    RequestedByOption,
    ResetOption,
    TicketOption,
    YesOption,
    confirm,
    emit,
    fail,
    guarded,
    out,
    requester,
    typed_params,
    with_progress,
)
from umc_infra.errors import ExitCode, ParamProblem, ParamsError
from umc_infra.run.options import RunOptions

if TYPE_CHECKING:
    from umc_infra.run.provisioner import Provisioner
    from umc_infra.run.results import PlanResult, ProvisionResult


def plan(
    blueprint: str,
    deployment: DeploymentOption = None,
    param: ParamOption = None,
    params_file: ParamsFileOption = None,
    reset: ResetOption = False,
    lock_timeout: LockTimeoutOption = None,
    requested_by: RequestedByOption = None,
    ticket: TicketOption = None,
    output: OutputOption = "text",
) -> None:
    """Show what provision would change: params, Terraform per resource, Ansible check mode per host.

    --requested-by and --ticket are checked as provision checks them; a plan records nothing.
    """
    options = RunOptions(reset=reset, lock_timeout_s=lock_timeout, requested_by=requester(requested_by), ticket=ticket)
    result: PlanResult = _run_blueprint("plan", blueprint, deployment, param, params_file, options, output)
    if output == "json":
        return
    if result.version_change:
        out.print(f"blueprint {result.blueprint}: {result.version_change}", highlight=False)
    for name, change in result.param_changes.items():
        out.print(f"param {name}: {change.before!r} -> {change.after!r}", highlight=False)
    table = Table("module", "resource", "action", "changes", title=f"plan for {result.deployment}",
                  title_justify="left")  # fmt: skip
    for r in result.resources:
        changes = ", ".join(f"{k}: {v.before!r} -> {v.after!r}" for k, v in r.attributes.items())
        table.add_row(r.module, r.address, r.action, changes)
    for module in result.deferred:
        table.add_row(module, "(known once the modules it reads are applied)", "later", "")
    for c in result.configuration:
        table.add_row(c.playbook, c.host, "configure", c.task)
    changed = result.resources or result.configuration or result.deferred
    out.print(table if changed else "nothing to change", highlight=False)


def provision(
    blueprint: str,
    deployment: DeploymentOption = None,
    param: ParamOption = None,
    params_file: ParamsFileOption = None,
    reset: ResetOption = False,
    allow_destroy: Annotated[bool, typer.Option(help="Let the change delete or replace VMs.")] = False,
    on_failure: Annotated[str, typer.Option(help="keep, or destroy a brand-new deployment that fails.")] = "keep",
    retry: Annotated[str, typer.Option(help="failed: resume at the failed hosts; all: everything.")] = "failed",
    lock_timeout: LockTimeoutOption = None,
    requested_by: RequestedByOption = None,
    ticket: TicketOption = None,
    output: OutputOption = "text",
) -> None:
    """Create, update or converge a deployment from a blueprint (params left out keep their value)."""
    if on_failure not in ("keep", "destroy") or retry not in ("failed", "all"):
        problem = ParamProblem(field="--on-failure/--retry", message=f"{on_failure!r}/{retry!r}",
                               allowed="--on-failure keep|destroy, --retry failed|all")  # fmt: skip
        fail(ParamsError([problem], blueprint=blueprint), output)

    options = RunOptions(allow_destroy=allow_destroy, lock_timeout_s=lock_timeout, reset=reset,
                         on_failure=cast(Literal["keep", "destroy"], on_failure),
                         retry=cast(Literal["failed", "all"], retry), requested_by=requester(requested_by),
                         ticket=ticket)  # fmt: skip

    result: ProvisionResult = _run_blueprint("provision", blueprint, deployment, param, params_file, options, output)
    if output == "json":
        return
    table = Table("host", "IP", "groups", title=f"{result.deployment} ({result.blueprint} {result.version})",
                  title_justify="left")  # fmt: skip
    for host in result.hosts:
        table.add_row(host.name, host.ip, ", ".join(host.groups))
    out.print(table)
    if result.outputs:
        outputs = Table("output", "value", title="outputs", title_justify="left")
        for name, value in result.outputs.items():
            outputs.add_row(name, value if isinstance(value, str) else json.dumps(value))
        out.print(outputs)
    changes = ", ".join(f"{m}: +{c.add} ~{c.change} -{c.remove}" for m, c in result.terraform.items())
    played = ", ".join(f"{name}: {run.changed} changed" for name, run in result.ansible.items())
    out.print(f"terraform {changes}; ansible {played or 'none'}; {sum(result.timings.values()):.1f} s", highlight=False)


def destroy(
    deployment: Annotated[str, typer.Argument(help="The deployment to destroy.")],
    yes: YesOption = False,
    lock_timeout: LockTimeoutOption = None,
    requested_by: RequestedByOption = None,
    ticket: TicketOption = None,
    output: OutputOption = "text",
) -> None:
    """Remove a deployment's VMs and addresses (the record stays, marked destroyed)."""
    confirm(f"Destroy every VM of deployment {deployment!r}?", yes=yes, step="destroy", output=output)
    options = RunOptions(lock_timeout_s=lock_timeout, requested_by=requester(requested_by), ticket=ticket)
    result = guarded(lambda: with_progress(lambda p: p.destroy(deployment, options=options)), output)
    if output == "json":
        emit(result, output)
    elif result.already_destroyed:
        out.print(f"{deployment} was already destroyed")
    else:
        out.print(f"{deployment} destroyed; released {', '.join(result.released_addresses) or 'no addresses'}")


def drift(
    deployment: Annotated[str, typer.Argument()], lock_timeout: LockTimeoutOption = None, output: OutputOption = "text"
) -> None:
    """Compare a deployment with vCenter and its hosts; exit 6 if anything drifted."""
    options = RunOptions(lock_timeout_s=lock_timeout)
    report = guarded(lambda: with_progress(lambda p: p.drift(deployment, options=options)), output)
    if output == "json":
        emit(report, output)
    else:
        for change in report.compute:
            for key, value in change.attributes.items():
                out.print(f"compute: {change.address} {key}: recorded {value.before!r}, now {value.after!r}")
        for config in report.configuration:
            out.print(f"configuration: {config.host}: {config.playbook}: {config.task}")
        out.print("drift found" if report.has_drift else "no drift")
    if report.has_drift:
        raise typer.Exit(ExitCode.DRIFT)


def _run_blueprint(
    operation: Literal["plan", "provision"],
    blueprint: str,
    deployment: str | None,
    param: list[str] | None,
    params_file: Path | None,
    options: RunOptions,
    output: Output,
) -> Any:
    """Plan or provision with the command line's params, progress shown; the result (as JSON too with -o json)."""

    def run(p: Provisioner) -> PlanResult | ProvisionResult:
        params = typed_params(p.blueprint(blueprint), param or [], params_file)
        act = p.plan if operation == "plan" else p.provision
        return act(blueprint, params, deployment=deployment, options=options)

    result = guarded(lambda: with_progress(run), output)
    if output == "json":
        emit(result, output)
    return result
