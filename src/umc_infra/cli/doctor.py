"""``umc-infra doctor``: check the site's settings against the real services; exit 9 if any check fails."""

from __future__ import annotations

import typer

from umc_infra.cli.common import OutputOption, cli_settings, emit, guarded, out
from umc_infra.errors import ExitCode

_MARK = {"ok": "[green]ok[/]     ", "failed": "[red]FAILED[/] ", "skipped": "[yellow]skipped[/]"}


def doctor(output: OutputOption = "text") -> None:
    """DoctorCheck every setting against the real services; exit 9 if any check fails.

    Terraform and the provider, Vault and its auth, every blueprint's secrets (never shown), the state backend
    (bucket, lock table, conditional writes), vCenter and the inventory the site names: one line per check,
    each failure saying what to set or fix.
    """
    from umc_infra.doctor import DoctorCheck
    from umc_infra.doctor import doctor as run_doctor

    def show(c: DoctorCheck) -> None:
        fix = f" [bold]->[/] {c.fix}" if c.status == "failed" and c.fix else ""
        out.print(f"{_MARK[c.status]} {c.name}: {c.detail}{fix}", highlight=False, soft_wrap=True)

    settings = guarded(cli_settings, output)
    report = guarded(lambda: run_doctor(settings, on_check=show if output == "text" else None), output)
    if output == "json":
        emit(report, output)
    if not report.ok:
        raise typer.Exit(ExitCode.UNHEALTHY)
