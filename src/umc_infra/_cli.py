"""The ``umc-infra`` command line: the sandbox commands here, blueprints and deployments in ``_cli_deploy``.

Exit codes are listed in :mod:`umc_infra._cli_deploy` (0 ok; 1 error; 2 bad input; ... 9 sandbox
unhealthy; 130 interrupted). Errors print one line on stderr: what, where and how to fix.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from umc_infra import __version__
from umc_infra._cli_deploy import Exit, fail, guarded, register, show_progress, state
from umc_infra._errors import SandboxError

if TYPE_CHECKING:
    from umc_infra.sandbox import Sandbox

EXIT_ERROR = int(Exit.ERROR)
EXIT_UNHEALTHY = int(Exit.UNHEALTHY)

app = typer.Typer(
    name="umc-infra",
    help="Self-service vSphere environments from service blueprints.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
sandbox_app = typer.Typer(
    help="The local sandbox: vCenter simulator, Vault, S3 state backend, SSH guests.", no_args_is_help=True
)
app.add_typer(sandbox_app, name="sandbox")
register(app)


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
) -> None:
    state["debug"] = debug


err = Console(stderr=True)
out = Console()

T = TypeVar("T")


def _guarded(action: Callable[[], T]) -> T:
    """Run a sandbox action: errors become one line on stderr and an exit code, like every command's."""
    try:
        return guarded(action, "text")
    except ValidationError as exc:  # settings from UMC_SANDBOX_* variables
        problems = "; ".join(
            f"UMC_SANDBOX_{'_'.join(str(part) for part in e['loc']).upper()}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        fail(SandboxError(f"invalid sandbox setting: {problems}"), "text")


def _sandbox() -> Sandbox:
    from umc_infra.sandbox import Sandbox

    return _guarded(lambda: Sandbox(on_progress=lambda message: err.print(f"[dim]•[/] {message}", highlight=False)))


@app.command()
def version() -> None:
    """Print the umc-infra version."""
    out.print(__version__)


@sandbox_app.command("up")
def sandbox_up() -> None:
    """Start (or reuse) the sandbox and print its connection settings."""
    sandbox = _sandbox()
    info = _guarded(sandbox.up)
    started = ", ".join(sandbox.started) or "nothing (all running)"
    err.print(f"sandbox up; started: {started}", highlight=False)
    table = Table("setting", "value", title="sandbox", title_justify="left")
    for name, value in info.environment().items():
        shown = "(from `umc-infra sandbox env`)" if name in {"VAULT_TOKEN", "UMC_VAULT_SECRET_ID"} else value
        table.add_row(name, shown)
    out.print(table)


@sandbox_app.command("down")
def sandbox_down(
    purge: Annotated[bool, typer.Option("--purge", help="Also remove the sandbox state directory.")] = False,
) -> None:
    """Stop every sandbox process (guests included)."""
    sandbox = _sandbox()
    _guarded(lambda: sandbox.down(purge=purge))
    err.print("sandbox down" + (" and purged" if purge else ""))


@sandbox_app.command("status")
def sandbox_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Show each component's health from a real client call; exit 9 if any is unhealthy."""
    sandbox = _sandbox()
    status = _guarded(sandbox.status)
    if as_json:
        sys.stdout.write(status.model_dump_json(indent=2) + "\n")
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
        raise typer.Exit(EXIT_UNHEALTHY)


@sandbox_app.command("demo")
def sandbox_demo(
    instances: Annotated[int, typer.Option(help="How many web servers.")] = 2,
    deployment: Annotated[str, typer.Option(help="The deployment's name.")] = "demo",
) -> None:
    """Bring the sandbox up, provision the web-server blueprint on it, and show the pages."""
    import urllib.request

    from umc_infra import provision

    sandbox = _sandbox()
    info = _guarded(sandbox.up)

    result = _guarded(
        lambda: provision(
            "web-server",
            {"instances": instances},
            deployment=deployment,
            settings=info.settings(),
            on_event=show_progress,
        )
    )
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


@sandbox_app.command("env")
def sandbox_env(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object instead of export lines.")] = False,
) -> None:
    """Print the connection settings as `export` lines: eval "$(umc-infra sandbox env)"."""
    sandbox = _sandbox()
    info = _guarded(sandbox.info)
    if as_json:
        sys.stdout.write(json.dumps(info.environment(), indent=2) + "\n")
    else:
        sys.stdout.write("\n".join(info.export_lines()) + "\n")


def main() -> None:
    """Console-script entry point."""
    app()
