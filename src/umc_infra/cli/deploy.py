"""``umc-infra plan``, ``provision``, ``destroy`` and ``drift``: a deployment's lifecycle, with live progress."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Literal, cast

import typer
from rich.table import Table

from umc_infra.cli.common import (
    DeploymentOption,
    OutputOption,
    ParamOption,
    ParamsFileOption,
    YesOption,
    confirm,
    emit,
    exit_code,  # noqa: F401  (a re-export, see Exit below)
    fail,
    guarded,
    out,
    typed_params,
    with_progress,
)
from umc_infra.errors import ExitCode, ParamProblem, ParamsError
from umc_infra.run.options import RunOptions

# for tests/unit/core/{test_lease,test_validate,test_vault_errors}.py and tests/integration/test_cli.py: removed
# once they import ExitCode from umc_infra.errors (and exit_code from umc_infra.cli.common)
Exit = ExitCode

if TYPE_CHECKING:
    from umc_infra.run.provisioner import Provisioner
    from umc_infra.run.results import PlanResult, ProvisionResult


def plan(
    blueprint: str,
    deployment: DeploymentOption,
    param: ParamOption = None,
    params_file: ParamsFileOption = None,
    output: OutputOption = "text",
) -> None:
    """Show what provision would change (Terraform per resource, Ansible check mode per host)."""

    def run(p: Provisioner) -> PlanResult:
        params = typed_params(p.blueprint(blueprint), param or [], params_file)
        return p.plan(blueprint, params, deployment=deployment)

    result = guarded(lambda: with_progress(run), output)
    if output == "json":
        emit(result, output)
        return
    table = Table("module", "resource", "action", "changes", title=f"plan for {deployment}", title_justify="left")
    for r in result.resources:
        changes = ", ".join(f"{k}: {v.before!r} -> {v.after!r}" for k, v in r.attributes.items())
        table.add_row(r.module, r.address, r.action, changes)
    for c in result.configuration:
        table.add_row(c.playbook, c.host, "configure", c.task)
    if result.version_change:
        out.print(f"blueprint {result.blueprint}: {result.version_change}", highlight=False)
    out.print(table if result.resources or result.configuration else "nothing to change", highlight=False)


def provision(
    blueprint: str,
    deployment: DeploymentOption,
    param: ParamOption = None,
    params_file: ParamsFileOption = None,
    allow_destroy: Annotated[bool, typer.Option(help="Let the change delete or replace VMs.")] = False,
    on_failure: Annotated[str, typer.Option(help="keep, or destroy a brand-new deployment that fails.")] = "keep",
    retry: Annotated[str, typer.Option(help="failed: resume at the failed hosts; all: everything.")] = "failed",
    lock_timeout: Annotated[float | None, typer.Option(help="Seconds to wait for another run.", min=0)] = None,
    output: OutputOption = "text",
) -> None:
    """Create, update or converge a deployment from a blueprint."""
    if on_failure not in ("keep", "destroy") or retry not in ("failed", "all"):
        problem = ParamProblem(field="--on-failure/--retry", message=f"{on_failure!r}/{retry!r}",
                               allowed="--on-failure keep|destroy, --retry failed|all")  # fmt: skip
        fail(ParamsError([problem], blueprint=blueprint), output)

    options = RunOptions(allow_destroy=allow_destroy, lock_timeout_s=lock_timeout,
                         on_failure=cast(Literal["keep", "destroy"], on_failure),
                         retry=cast(Literal["failed", "all"], retry))  # fmt: skip

    def run(p: Provisioner) -> ProvisionResult:
        params = typed_params(p.blueprint(blueprint), param or [], params_file)
        return p.provision(blueprint, params, deployment=deployment, options=options)

    result = guarded(lambda: with_progress(run), output)
    if output == "json":
        emit(result, output)
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
    output: OutputOption = "text",
) -> None:
    """Remove a deployment's VMs and addresses (the record stays, marked destroyed)."""
    confirm(f"Destroy every VM of deployment {deployment!r}?", yes=yes, step="destroy", output=output)
    result = guarded(lambda: with_progress(lambda p: p.destroy(deployment)), output)
    if output == "json":
        emit(result, output)
    elif result.already_destroyed:
        out.print(f"{deployment} was already destroyed")
    else:
        out.print(f"{deployment} destroyed; released {', '.join(result.released_addresses) or 'no addresses'}")


def drift(deployment: Annotated[str, typer.Argument()], output: OutputOption = "text") -> None:
    """Compare a deployment with vCenter and its hosts; exit 6 if anything drifted."""
    report = guarded(lambda: with_progress(lambda p: p.drift(deployment)), output)
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
