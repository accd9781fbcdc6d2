"""``umc-infra sandbox``: the local sandbox (vCenter simulator, Vault, S3 state backend, PostgreSQL, SSH guests)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from pydantic import ValidationError
from rich.table import Table

from umc_infra.cli.common import Output, command_group, emit, err, guarded, out, print_json
from umc_infra.cli.progress import progress
from umc_infra.errors import ExitCode
from umc_infra.settings import invalid_settings

if TYPE_CHECKING:
    from umc_infra import ProvisionResult
    from umc_infra.sandbox import Sandbox

T = TypeVar("T")
app = command_group("The local sandbox: vCenter simulator, Vault, S3 state backend, SSH guests.")


def _sandbox(output: Output = "text") -> Sandbox:
    from umc_infra.sandbox import Sandbox

    def make() -> Sandbox:
        try:
            return Sandbox(on_progress=lambda message: err.print(f"[dim]•[/] {message}", highlight=False))
        except ValidationError as exc:  # settings from UMC_SANDBOX_* variables
            raise invalid_settings(exc, lambda name: f"UMC_SANDBOX_{name.upper()}") from None

    return guarded(make, output)


def _ask(question: Callable[[Sandbox], T], *, as_json: bool) -> T:
    """Ask the sandbox something that needs no start; with ``--json`` its errors are JSON too."""
    output: Output = "json" if as_json else "text"
    sandbox = _sandbox(output)
    return guarded(lambda: question(sandbox), output)


SECRET_SETTINGS = frozenset({"VAULT_TOKEN", "UMC_VAULT_SECRET_ID", "AWS_SECRET_ACCESS_KEY", "UMC_SERVICE_DATABASE_URL"})
"""Settings ``sandbox up`` names but never shows (``sandbox env`` prints them for ``eval``)."""


@app.command("up")
def sandbox_up() -> None:
    """Start (or reuse) the sandbox and print its connection settings."""
    sandbox = _sandbox()
    info = guarded(sandbox.up, "text")
    started = ", ".join(sandbox.started) or "nothing (all running)"
    err.print(f"sandbox up; started: {started}", highlight=False)
    table = Table("setting", "value", title="sandbox", title_justify="left")
    for name, value in info.environment().items():
        shown = "(from `umc-infra sandbox env`)" if name in SECRET_SETTINGS else value
        table.add_row(name, shown)
    out.print(table)


@app.command("down")
def sandbox_down(
    purge: Annotated[bool, typer.Option("--purge", help="Also remove the sandbox state directory.")] = False,
) -> None:
    """Stop every sandbox process (guests included)."""
    sandbox = _sandbox()
    guarded(lambda: sandbox.down(purge=purge), "text")
    err.print("sandbox down" + (" and purged" if purge else ""))


@app.command("status")
def sandbox_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Show each component's health from a real client call; exit 9 if any is unhealthy."""
    status = _ask(lambda sandbox: sandbox.status(), as_json=as_json)
    if as_json:
        emit(status, "json")
    else:
        table = Table("component", "healthy", "pid", "detail", title="sandbox status", title_justify="left")
        for c in status.components:
            table.add_row(c.name, "yes" if c.healthy else "NO", str(c.pid or "-"), c.detail)
        out.print(table)
        if status.guests:
            guests = Table("guest IP", "VM", "running", "pid", title="guests", title_justify="left")
            for g in status.guests:
                guests.add_row(str(g.vm.ip), g.vm.name, "yes" if g.running else "no", str(g.pid or "-"))
            out.print(guests)
    if not status.healthy:
        raise typer.Exit(ExitCode.UNHEALTHY)


@app.command("demo")
def sandbox_demo(
    instances: Annotated[int, typer.Option(help="How many web servers.")] = 2,
    deployment: Annotated[str, typer.Option(help="The deployment's name.")] = "demo",
) -> None:
    """Bring the sandbox up, provision the web-server blueprint on it, and show the pages."""
    import urllib.request

    from umc_infra import provision

    sandbox = _sandbox()
    info = guarded(sandbox.up, "text")

    def run() -> ProvisionResult:
        with progress(err) as on_event:
            return provision("web-server", {"instances": instances}, deployment=deployment,
                             settings=info.settings(), on_event=on_event)  # fmt: skip

    result = guarded(run, "text")
    table = Table(
        "host",
        "IP",
        "URL",
        "answers",
        title=f"deployment {result.deployment} ({result.blueprint} {result.version})",
        title_justify="left",
    )
    for host in result.hosts:
        url = f"http://{host.ip}/"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                answers = "yes" if host.name in response.read().decode() else "wrong page"
        except OSError as exc:
            answers = f"no ({type(exc).__name__})"
        table.add_row(host.name, host.ip, url, answers)
    out.print(table)
    changes = ", ".join(f"{m}: +{c.add} ~{c.change} -{c.remove}" for m, c in result.terraform.items())
    played = ", ".join(f"{p}: {r.changed} changed" for p, r in result.ansible.items())
    out.print(f"terraform {changes}; ansible {played}; {sum(result.timings.values()):.1f} s")


@app.command("token")
def sandbox_token(
    user: Annotated[str, typer.Argument(help="A sandbox user: alice (cardiology-it), bob (radiology-it), admin.")],
) -> None:
    """Print a fresh OIDC ID token for a sandbox user, raw.

    For a service call: curl -H "Authorization: Bearer $(umc-infra sandbox token alice)" ...
    """
    token = _ask(lambda sandbox: sandbox.token(user), as_json=False)
    sys.stdout.write(token.get_secret_value() + "\n")


@app.command("env")
def sandbox_env(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object instead of export lines.")] = False,
) -> None:
    """Print the connection settings as `export` lines: eval "$(umc-infra sandbox env)"."""
    info = _ask(lambda sandbox: sandbox.info(), as_json=as_json)
    if as_json:
        print_json(info.environment())
    else:
        sys.stdout.write("\n".join(info.export_lines()) + "\n")
