"""The ``umc-infra`` command line: the app, its global options, and :func:`main`, the console script.

Each command group lives in its own module: :mod:`~umc_infra.cli.blueprints`, :mod:`~umc_infra.cli.deploy`
(plan, provision, destroy, drift), :mod:`~umc_infra.cli.records` (status, deployments, unlock,
forget-host-key), :mod:`~umc_infra.cli.doctor`, :mod:`~umc_infra.cli.service` (serve, worker) and
:mod:`~umc_infra.cli.sandbox`; what they share is
:mod:`~umc_infra.cli.common`.
Errors print one line on stderr: what, where and how to fix; with JSON output (``-o json``, ``--json``)
also one JSON error document on stdout, usage errors included (:func:`main`). The exit code is the
error's own (:class:`umc_infra.errors.ExitCode`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from umc_infra import __version__
from umc_infra.cli import blueprints, deploy, doctor, records, sandbox, service
from umc_infra.cli.common import Output, err, fail, internal_error, out, print_json, requested_output, state
from umc_infra.errors import ExitCode

app = typer.Typer(
    name="umc-infra",
    help="Self-service vSphere environments from service blueprints.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(sandbox.app, name="sandbox")
app.add_typer(blueprints.app, name="blueprints")
for command in (deploy.plan, deploy.provision, deploy.destroy, deploy.drift, records.status, records.deployments,
                records.unlock):  # fmt: skip
    app.command()(command)
app.command("forget-host-key")(records.forget_host_key)
app.command()(doctor.doctor)
app.command()(service.serve)
app.command()(service.worker)


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


@app.command()
def version() -> None:
    """Print the umc-infra version."""
    out.print(__version__)


def main(args: Sequence[str] | None = None) -> None:
    """Console-script entry point: every outcome is an exit code, and with JSON output one JSON document.

    Commands report their own errors (:func:`umc_infra.cli.common.guarded`). This catches what happens
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
        interrupted = code == ExitCode.INTERRUPTED
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
            print_json({"error": {"type": "Aborted", "message": "aborted: nothing was changed",
                                  "exit_code": int(ExitCode.ERROR), "step": None}})  # fmt: skip
        err.print("Aborted!", highlight=False)
        return ExitCode.ERROR
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
