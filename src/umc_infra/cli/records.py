"""``umc-infra status``, ``deployments``, ``unlock`` and ``forget-host-key``: what the state backend records."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from umc_infra.cli.common import OutputOption, YesOption, confirm, emit, guarded, out, provisioner


def status(deployment: Annotated[str, typer.Argument()], output: OutputOption = "text") -> None:
    """A deployment's record: state, hosts, outputs and every run."""
    record = guarded(lambda: provisioner().status(deployment), output)
    if output == "json":
        emit(record, output)
        return
    out.print(f"{record.deployment}: {record.state} ({record.blueprint} {record.version})", highlight=False)
    table = Table("action", "outcome", "who", "requested by", "ticket", "started", "failed step", title="runs",
                  title_justify="left")  # fmt: skip
    for run in record.runs:
        who = run.actor.user + (f" (CI job {run.actor.ci_job_id})" if run.actor.ci_job_id else "")
        # Escaped: a CI user such as dependabot[bot] is not rich markup.
        table.add_row(run.action, run.outcome, escape(who), escape(run.requested_by or ""), escape(run.ticket or ""),
                      f"{run.started_at:%Y-%m-%d %H:%M:%S}", run.failed_step or "")  # fmt: skip
    out.print(table)


def deployments(output: OutputOption = "text") -> None:
    """Every deployment in the state backend."""
    records = guarded(lambda: provisioner().deployments(), output)
    if output == "json":
        emit(records, output)
        return
    table = Table("deployment", "state", "blueprint", "hosts", "updated", title="deployments", title_justify="left")
    for r in records:
        table.add_row(r.deployment, r.state, f"{r.blueprint} {r.version}", str(len(r.hosts)),
                      f"{r.updated_at:%Y-%m-%d %H:%M:%S}")  # fmt: skip
    out.print(table)


def unlock(
    deployment: Annotated[str, typer.Argument(help="The deployment whose lease to remove.")],
    yes: YesOption = False,
    force: Annotated[
        bool, typer.Option("--force", help="Break the lease even if its holder looks alive (it then stops).")
    ] = False,
    output: OutputOption = "text",
) -> None:
    """Remove the lease of a run that died (or, with --force, any lease); prints who held it.

    A live holder's lease is refused (exit 3) unless --force: two runs would then change the deployment at once.
    """
    question = (
        f"Break the lease of {deployment!r} even if its holder is alive? Its run stops at its next renewal."
        if force
        else f"Remove the lease of {deployment!r}? Only a dead or expired one is removed."
    )
    confirm(question, yes=yes, step="unlock", output=output)
    held = guarded(lambda: provisioner().break_lock(deployment, force=force), output)
    if output == "json":
        sys.stdout.write(
            json.dumps({"deployment": deployment, "removed": held and held.model_dump(mode="json")}) + "\n"
        )
    else:
        out.print(f"removed the lease of {deployment}, held by {held.holder} since {held.since:%Y-%m-%d %H:%M:%S}"
                  if held else f"{deployment} holds no valid lease now", highlight=False)  # fmt: skip


def forget_host_key(
    deployment: Annotated[str, typer.Argument(help="The deployment.")],
    host: Annotated[str | None, typer.Argument(help="The VM (its host name); every VM if left out.")] = None,
    yes: YesOption = False,
    output: OutputOption = "text",
) -> None:
    """Forget a VM's pinned SSH host key, after it was rebuilt outside umc-infra on purpose.

    The next run trusts whatever answers at the VM's address: do not use this when you did not rebuild it.
    """
    confirm(f"Forget the pinned SSH host key of {host or 'every VM'} in {deployment!r}?", yes=yes, step="hostkeys",
            output=output)  # fmt: skip
    forgotten = guarded(lambda: provisioner().forget_host_keys(deployment, host), output)
    if output == "json":
        sys.stdout.write(json.dumps({"deployment": deployment, "forgotten": forgotten}) + "\n")
    else:
        out.print(f"forgot the pinned host keys of {', '.join(forgotten) or 'no host'} in {deployment}",
                  highlight=False)  # fmt: skip
