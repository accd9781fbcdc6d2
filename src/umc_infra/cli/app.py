"""The ``umc-infra`` command line: the sandbox commands here, blueprints and deployments in ``_cli_deploy``.

Exit codes are listed in :mod:`umc_infra.cli.deploy` (0 ok; 1 error; 2 bad input; ... 9 sandbox
unhealthy; 130 interrupted). Errors print one line on stderr: what, where and how to fix; with JSON
output (``-o json``, ``--json``) also one JSON error document on stdout, usage errors included (:func:`main`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from umc_infra import __version__
from umc_infra.cli.deploy import (
    Exit,
    Output,
    emit,
    fail,
    guarded,
    internal_error,
    print_json,
    register,
    requested_output,
    state,
)
from umc_infra.cli.progress import progress
from umc_infra.settings import invalid_settings

if TYPE_CHECKING:
    from umc_infra import ProvisionResult
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


_SETTING = "Settings (flags win over UMC_* variables)"


def _setting(help: str, *, file: bool = False) -> Any:
    return typer.Option(help=help, rich_help_panel=_SETTING, show_default=False, exists=file, dir_okay=not file)


@app.callback()
def _options(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
    vault_addr: Annotated[str | None, _setting("Vault URL [UMC_VAULT_ADDR, VAULT_ADDR].")] = None,
    vault_namespace: Annotated[str | None, _setting("Vault namespace [UMC_VAULT_NAMESPACE].")] = None,
    vault_role_id: Annotated[str | None, _setting("AppRole role id [UMC_VAULT_ROLE_ID].")] = None,
    vault_secret_id_file: Annotated[Path | None, _setting("A file holding the AppRole secret id.", file=True)] = None,
    vault_token_file: Annotated[Path | None, _setting("A file holding a Vault token.", file=True)] = None,
    vault_jwt_file: Annotated[Path | None, _setting("A file holding a CI job's ID token.", file=True)] = None,
    vault_jwt_role: Annotated[str | None, _setting("Vault JWT role [UMC_VAULT_JWT_ROLE].")] = None,
    backend: Annotated[str | None, _setting("State backend: local or s3 [UMC_BACKEND].")] = None,
    state_dir: Annotated[Path | None, _setting("Working (and local backend) directory [UMC_STATE_DIR].")] = None,
    state_bucket: Annotated[str | None, _setting("S3 bucket for state and records [UMC_STATE_BUCKET].")] = None,
    lock_table: Annotated[str | None, _setting("DynamoDB table for Terraform's lock [UMC_LOCK_TABLE].")] = None,
    s3_endpoint: Annotated[str | None, _setting("S3/DynamoDB endpoint URL [UMC_S3_ENDPOINT].")] = None,
    s3_region: Annotated[str | None, _setting("S3 region [UMC_S3_REGION].")] = None,
    vsphere_server: Annotated[str | None, _setting("vCenter server [UMC_VSPHERE_SERVER].")] = None,
) -> None:
    state.debug = debug
    state.command = f"umc-infra {ctx.invoked_subcommand}"
    state.emitted = False
    # Credential files are read with the other settings, inside the command: a failure is then a typed error.
    state.secret_files = {"vault_token": vault_token_file, "vault_secret_id": vault_secret_id_file,
                          "vault_jwt": vault_jwt_file}  # fmt: skip
    state.settings = {
        "vault_addr": vault_addr, "vault_namespace": vault_namespace, "vault_role_id": vault_role_id,
        "vault_jwt_role": vault_jwt_role, "backend": backend, "state_dir": state_dir, "state_bucket": state_bucket,
        "lock_table": lock_table, "s3_endpoint": s3_endpoint, "s3_region": s3_region, "vsphere_server": vsphere_server,
    }  # fmt: skip


@sandbox_app.callback()
def _sandbox_group(ctx: typer.Context) -> None:
    state.command += f" {ctx.invoked_subcommand}"


err = Console(stderr=True)
out = Console()

T = TypeVar("T")


def _sandbox(output: Output = "text") -> Sandbox:
    from umc_infra.sandbox import Sandbox

    def make() -> Sandbox:
        try:
            return Sandbox(on_progress=lambda message: err.print(f"[dim]•[/] {message}", highlight=False))
        except ValidationError as exc:  # settings from UMC_SANDBOX_* variables
            raise invalid_settings(exc, lambda name: f"UMC_SANDBOX_{name.upper()}") from None

    return guarded(make, output)


@app.command()
def version() -> None:
    """Print the umc-infra version."""
    out.print(__version__)


@sandbox_app.command("up")
def sandbox_up() -> None:
    """Start (or reuse) the sandbox and print its connection settings."""
    sandbox = _sandbox()
    info = guarded(sandbox.up, "text")
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
    guarded(lambda: sandbox.down(purge=purge), "text")
    err.print("sandbox down" + (" and purged" if purge else ""))


@sandbox_app.command("status")
def sandbox_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Show each component's health from a real client call; exit 9 if any is unhealthy."""
    output: Output = "json" if as_json else "text"
    sandbox = _sandbox(output)
    status = guarded(sandbox.status, output)
    if as_json:
        emit(status, output)
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


@sandbox_app.command("env")
def sandbox_env(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object instead of export lines.")] = False,
) -> None:
    """Print the connection settings as `export` lines: eval "$(umc-infra sandbox env)"."""
    output: Output = "json" if as_json else "text"
    sandbox = _sandbox(output)
    info = guarded(sandbox.info, output)
    if as_json:
        print_json(info.environment())
    else:
        sys.stdout.write("\n".join(info.export_lines()) + "\n")


def main(args: Sequence[str] | None = None) -> None:
    """Console-script entry point: every outcome is an exit code, and with JSON output one JSON document.

    Commands report their own errors (:func:`umc_infra.cli.deploy.guarded`). This catches what happens
    outside them: click's usage errors (click's message and exit code 2, plus a JSON error when the
    command line asks for JSON), an abort at a prompt, and anything unexpected (an InternalError).
    """
    argv = list(sys.argv[1:] if args is None else args)
    output = requested_output(argv)
    state.emitted = False
    try:
        code = _run(argv, output)
    except typer.Exit as exc:  # fail() outside click's own handling
        code = exc.exit_code
    if code and output == "json" and not state.emitted:  # e.g. Ctrl-C outside a command's guard
        interrupted = code == Exit.INTERRUPTED
        print_json({"error": {"type": "KeyboardInterrupt" if interrupted else "Exit", "exit_code": code,
                              "message": "interrupted" if interrupted else f"exited with code {code}",
                              "step": None}})  # fmt: skip
    sys.exit(code)


def _run(argv: list[str], output: Output) -> int:
    try:
        result = app(args=argv, prog_name="umc-infra", standalone_mode=False)
    except typer.TyperException as exc:  # click's usage errors (typer's own copy of click)
        if output == "json":
            print_json({"error": {"type": type(exc).__name__, "message": exc.format_message(),
                                  "exit_code": exc.exit_code, "step": "usage"}})  # fmt: skip
        _show_usage_error(exc)
        return exc.exit_code
    except typer.Abort:
        if output == "json":
            print_json({"error": {"type": "Aborted", "message": "aborted: nothing was changed", "exit_code": 1,
                                  "step": None}})  # fmt: skip
        err.print("Aborted!", highlight=False)
        return 1
    except Exception as exc:  # not in a command's guard: still one line, typed
        fail(internal_error(exc), output)
    return result if isinstance(result, int) else 0


def _show_usage_error(exc: typer.TyperException) -> None:
    """A usage error as typer shows it: the usage line and a panel with click's message."""
    from typer import rich_utils
    from typer._click.exceptions import ClickException  # typer 0.29 vendors click (pinned)

    if isinstance(exc, ClickException):
        rich_utils.rich_format_error(exc)
    else:
        err.print(f"Error: {exc.format_message()}", markup=False, highlight=False)
