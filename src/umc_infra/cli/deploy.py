"""``umc-infra`` commands for blueprints and deployments: the Python API, for CI pipelines and people.

``--output json`` prints one JSON document on stdout (the result model, or ``{"error": ...}``) and
everything else on stderr, whatever fails: an error that is not an :class:`UmcInfraError` becomes an
:class:`InternalError` (exit 1) naming the command, its type and a redacted line; the traceback only
with ``--debug``. Exit codes, for CI:

==== ==========================================================================
0    ok
1    any other umc_infra error
2    bad parameters, blueprint or usage (nothing was created)
3    the deployment is locked by another run
4    Terraform failed
5    Ansible failed
6    drift found (``drift``)
7    refused: the change would delete or replace VMs, the reviewed plan changed, or a VM's SSH host key changed
8    a secret could not be read from Vault
9    the sandbox is unhealthy (``sandbox status``)
130  interrupted or cancelled
==== ==========================================================================
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn, TypeVar

import typer
import yaml
from pydantic import BaseModel, SecretStr
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from umc_infra.cli.progress import progress
from umc_infra.errors import (
    BlueprintError,
    BlueprintNotFound,
    Cancelled,
    DeploymentLocked,
    DeploymentNotFound,
    DestroyNotAllowed,
    HostKeyChanged,
    InternalError,
    ParamProblem,
    ParamsError,
    PlanChanged,
    PlaybookError,
    SecretError,
    SettingsError,
    TerraformError,
    UmcInfraError,
)
from umc_infra.secrets.redact import Redactor

if TYPE_CHECKING:
    from umc_infra.blueprint.model import Blueprint
    from umc_infra.blueprint.validate import ValidationReport
    from umc_infra.events import EventCallback
    from umc_infra.run.provisioner import PlanResult, Provisioner, ProvisionResult
    from umc_infra.settings import Settings


class Exit(IntEnum):
    """The documented exit codes."""

    OK = 0
    ERROR = 1
    BAD_INPUT = 2
    LOCKED = 3
    TERRAFORM = 4
    ANSIBLE = 5
    DRIFT = 6
    REFUSED = 7
    SECRETS = 8
    UNHEALTHY = 9
    INTERRUPTED = 130


_CODES: list[tuple[type[BaseException], Exit]] = [
    (ParamsError, Exit.BAD_INPUT),
    (BlueprintNotFound, Exit.BAD_INPUT),
    (BlueprintError, Exit.BAD_INPUT),
    (SettingsError, Exit.BAD_INPUT),
    (DeploymentNotFound, Exit.BAD_INPUT),
    (DeploymentLocked, Exit.LOCKED),
    (TerraformError, Exit.TERRAFORM),
    (PlaybookError, Exit.ANSIBLE),
    (DestroyNotAllowed, Exit.REFUSED),
    (PlanChanged, Exit.REFUSED),
    (HostKeyChanged, Exit.REFUSED),
    (SecretError, Exit.SECRETS),
    (Cancelled, Exit.INTERRUPTED),
    (InternalError, Exit.ERROR),
]

Output = Literal["text", "json"]
T = TypeVar("T")
err = Console(stderr=True)
out = Console()


@dataclass
class _State:
    """What the global options set (``--debug``, settings that win over the environment), and what ran."""

    debug: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    secret_files: dict[str, Path | None] = field(default_factory=dict)
    """Settings field -> the file its ``--...-file`` flag names; read when the settings are (errors typed)."""
    command: str = "umc-infra"
    """The command line's commands (``umc-infra blueprints validate``), for errors."""
    emitted: bool = False
    """A JSON document went to stdout: nothing else may."""


state = _State()

OutputOption = Annotated[Output, typer.Option("--output", "-o", help="text for people, json for CI (stdout).")]
DeploymentOption = Annotated[str, typer.Option("--deployment", "-d", help="The deployment's name.")]
ParamOption = Annotated[
    list[str] | None,
    typer.Option("--param", "-p", help="KEY=VALUE, typed by the blueprint (lists as JSON); repeatable."),
]
ParamsFileOption = Annotated[
    Path | None, typer.Option("--params-file", help="A YAML or JSON mapping of params (-p wins).")
]
PARAMS_FILE_ALLOWED = "a YAML or JSON mapping of param names to plain values (text, numbers, booleans, lists, mappings)"


def exit_code(exc: BaseException) -> Exit:
    """The exit code of an error."""
    if isinstance(exc, KeyboardInterrupt):
        return Exit.INTERRUPTED
    return next((code for kind, code in _CODES if isinstance(exc, kind)), Exit.ERROR)


def fail(exc: BaseException, output: Output) -> NoReturn:
    """One line on stderr (and a JSON error document in json mode), then the exit code.

    With ``--debug`` the traceback follows on stderr, redacted: for an :class:`InternalError`, the original
    exception's.
    """
    code = exit_code(exc)
    message = str(exc) if isinstance(exc, UmcInfraError) else f"interrupted ({type(exc).__name__})"
    if output == "json":
        error: dict[str, Any] = {"type": type(exc).__name__, "message": message, "exit_code": int(code)}
        if isinstance(exc, UmcInfraError):
            error["step"] = exc.step
        if isinstance(exc, ParamsError | SettingsError):
            error["problems"] = [p.model_dump() for p in exc.problems]
        if isinstance(exc, InternalError):
            error["cause"] = exc.cause
        print_json({"error": error})
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
    if state.debug:
        trace = "".join(traceback.format_exception(exc))
        err.print(redactor()(trace).rstrip("\n"), markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(int(code))


def guarded(action: Callable[[], T], output: Output) -> T:
    """Run an action; any error or an interrupt becomes one line, the JSON error, and its exit code.

    An error that is not an :class:`UmcInfraError` is a bug or a failure nobody foresaw: it is reported as an
    :class:`InternalError` (exit 1), never as a traceback unless ``--debug``.
    """
    try:
        return action()
    except (UmcInfraError, KeyboardInterrupt) as exc:
        fail(exc, output)
    except (typer.Exit, typer.Abort, typer.TyperException):  # a command's own exit code, or click's (typer's copy)
        raise
    except Exception as exc:
        fail(internal_error(exc), output)


def internal_error(exc: BaseException) -> InternalError:
    """An unexpected exception as an InternalError: the command, its type and its first line, redacted and clipped.

    The original is its ``__cause__``, so ``--debug`` shows where it came from.
    """
    kind = type(exc).__qualname__
    if type(exc).__module__ != "builtins":
        kind = f"{type(exc).__module__}.{kind}"
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "(no message)")
    first = redactor()(first)
    if len(first) > _LINE:
        first = first[:_LINE] + "..."
    error = InternalError(
        f"unexpected error in `{state.command}`: {kind}: {first}; this is a bug or a failure umc_infra does not "
        "handle yet: rerun with --debug for the traceback and report it",
        command=state.command,
        cause=kind,
    )
    error.__cause__ = exc
    return error


_LINE = 200


def redactor() -> Redactor:
    """Every credential this command line may know (flags, their files, ``UMC_*`` variables), to hide in output."""
    values: list[Any] = list(state.settings.values())
    # Reporting an error must not fail on the settings (they may be what failed): what loads is hidden.
    with contextlib.suppress(Exception):
        settings = cli_settings()
        values += [getattr(settings, name) for name in type(settings).model_fields]
    return Redactor(v for v in values if isinstance(v, SecretStr))


def print_json(document: Any) -> None:
    """A JSON document on stdout: in json mode, the only one there."""
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    state.emitted = True


def emit(model: BaseModel | list[Any], output: Output) -> None:
    """The result as JSON on stdout."""
    if isinstance(model, list):
        print_json([m.model_dump(mode="json") for m in model])
    else:
        sys.stdout.write(model.model_dump_json(indent=2) + "\n")
        state.emitted = True


def requested_output(args: Sequence[str]) -> Output:
    """Whether a command line asks for JSON (``-o json``, ``--output json``, ``--json``), before click parses it.

    For errors click raises before any command runs (usage errors), so that they can be JSON too.
    """
    for i, arg in enumerate(args):
        if arg in ("--json", "--output=json", "-ojson") or (
            arg in ("-o", "--output") and args[i + 1 : i + 2] == ["json"]
        ):
            return "json"
    return "text"


def flag(name: str) -> str:
    """The command-line flag of a settings field (``state_bucket`` -> ``--state-bucket``)."""
    return "--" + name.replace("_", "-")


def cli_settings() -> Settings:
    """The environment's settings, the global flags winning; credentials read from the files the flags name.

    Raises:
        SettingsError: A setting is invalid, or a credential file cannot be read (names the flag).
    """
    from umc_infra.settings import load_settings

    given = dict(state.settings)
    for name, path in state.secret_files.items():
        if path is not None:
            given[name] = _secret_file(name, path)
    return load_settings(given, argument_name=flag)


def _secret_file(name: str, path: Path) -> SecretStr:
    """A credential read from a file: never from argv, where every process on the machine could see it."""
    try:
        return SecretStr(path.read_text().strip())
    except (OSError, UnicodeDecodeError) as exc:
        problem = ParamProblem(field=f"{flag(name)}-file", message=f"cannot read {path} ({type(exc).__name__})",
                               allowed="a readable file that holds only the credential")  # fmt: skip
        raise SettingsError([problem]) from None


def provisioner(on_event: EventCallback | None = None) -> Provisioner:
    """A Provisioner with the environment's settings, the global flags winning."""
    from umc_infra.run.provisioner import Provisioner

    return Provisioner(settings=cli_settings(), on_event=on_event)


def with_progress(action: Callable[[Provisioner], T]) -> T:
    """Run an action on a Provisioner while the progress display follows it on stderr."""
    with progress(err) as on_event:
        return action(provisioner(on_event))


def typed_params(blueprint: Blueprint, pairs: list[str], params_file: Path | None) -> dict[str, Any]:
    """Params from a file and ``KEY=VALUE`` flags (flags win), each value typed by the blueprint.

    Raises:
        ParamsError: A flag is not KEY=VALUE, a value does not convert, or the file is not a mapping.
    """
    params: dict[str, Any] = {}
    problems: list[ParamProblem] = []
    if params_file is not None:
        loaded, problem = read_params_file(params_file)
        params.update(loaded)
        if problem is not None:
            problems.append(ParamProblem(field="--params-file", message=problem, allowed=PARAMS_FILE_ALLOWED))
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        spec = blueprint.params.get(key)
        if not sep or not key:
            problems.append(ParamProblem(field="param", message=f"{pair!r} is not KEY=VALUE", allowed="-p cpu=2"))
        else:
            # A value that does not convert stays text: validation then reports it with every other problem.
            params[key] = raw if spec is None else _convert(spec.type, raw)
    if problems:
        raise ParamsError(problems, blueprint=blueprint.name)
    return params


def read_params_file(path: Path) -> tuple[dict[str, Any], str | None]:
    """The params in a YAML or JSON file, plain data only (``yaml.safe_load``); or what is wrong with it.

    What is wrong names the file and the line where YAML knows it, and never quotes the file: it may hold
    secret params. A tag that is not plain data (``!!python/object/apply:...``) is never constructed.
    """
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        return {}, f"{path} is not UTF-8 text"
    except OSError as exc:
        return {}, f"{path} cannot be read ({type(exc).__name__}: {exc.strerror or 'error'})"
    try:
        loaded = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f"{path} line {mark.line + 1}" if mark is not None else str(path)
        if isinstance(exc, yaml.constructor.ConstructorError) and "constructor for the tag" in (exc.problem or ""):
            return {}, f"{at}: a YAML tag that is not plain data (such as !!python/...); only plain values are read"
        return {}, f"{at}: not valid YAML or JSON ({_unquoted(exc.problem or type(exc).__name__)})"
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as exc:  # e.g. `!!int x`, or nested too deep
        return {}, f"{path}: not plain YAML or JSON data ({type(exc).__name__})"
    if not isinstance(loaded, dict):
        kind = "empty" if loaded is None else _KINDS.get(type(loaded), f"a {type(loaded).__name__}")
        return {}, f"{path} is {kind}, not a mapping"
    from umc_infra.blueprint.catalog import line_of

    wrong = _not_plain(loaded)
    if wrong is not None:
        where, what = wrong
        found = line_of(text, where)
        at = f" line {found[0]}" if found else ""
        return {}, f"{path}{at}: {what}"
    return loaded, None


def _unquoted(problem: str) -> str:
    """YAML's description of a syntax error, without the names it quotes from the file (tags, aliases)."""
    return re.sub(r"'([^']*)'", lambda m: m[0] if len(m[1]) <= 1 or re.fullmatch(r"<[a-z ]+>", m[1]) else "'...'",
                  problem)  # fmt: skip


_KINDS = {list: "a list", str: "text", int: "a number", float: "a number", bool: "a boolean"}
_PLAIN = (str, int, float, bool, type(None))


def _not_plain(document: dict[str, Any]) -> tuple[str, str] | None:
    """Where the first value that is not plain data is (a dotted path) and what is wrong; None if all are plain.

    A list or mapping that occurs twice (a YAML alias) counts as not plain: aliases can nest into billions of
    values, or into themselves.
    """
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", document)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, _PLAIN):
            continue
        if not isinstance(value, dict | list):
            hint = "; quote it to pass it as text" if isinstance(value, datetime.date) else ""
            return where, f"the value of {where!r} is not plain data ({type(value).__name__}){hint}"
        if id(value) in seen:
            return where, f"the value of {where!r} repeats a list or mapping through a YAML alias; write it out"
        seen.add(id(value))
        items = list(enumerate(value)) if isinstance(value, list) else list(value.items())
        for key, item in reversed(items):  # depth first, in file order
            if isinstance(value, list):
                stack.append((f"{where}[{key}]", item))
            elif isinstance(key, str):
                stack.append((f"{where}.{key}" if where else key, item))
            else:
                inside = f"the mapping {where!r}" if where else "the mapping"
                message = f"{inside} has a key that is not text ({type(key).__name__})"
                return (f"{where}.{key}" if where else str(key)), message
    return None


def _convert(kind: str, raw: str) -> Any:
    """The flag's text as the param's type; the text itself if it is not one (validation says so)."""
    try:
        if kind == "integer":
            return int(raw)
        if kind == "number":
            return float(raw)
        if kind == "list":
            value = json.loads(raw)
            return value if isinstance(value, list) else raw
    except ValueError:
        return raw
    if kind == "boolean":
        return {"true": True, "yes": True, "1": True, "on": True, "false": False, "no": False, "0": False,
                "off": False}.get(raw.lower(), raw)  # fmt: skip
    return raw


blueprints_app = typer.Typer(help="The blueprints there are, what they take, and their JSON Schema.",
                             no_args_is_help=True)  # fmt: skip


@blueprints_app.callback()
def _blueprints_group(ctx: typer.Context) -> None:
    state.command += f" {ctx.invoked_subcommand}"


def register(app: typer.Typer) -> None:
    """Add the blueprint and deployment commands to the ``umc-infra`` app."""
    app.add_typer(blueprints_app, name="blueprints")
    for command in (plan, provision, destroy, drift, status, deployments, unlock):
        app.command()(command)
    app.command("forget-host-key")(forget_host_key)


@blueprints_app.command("list")
def blueprints_list(output: OutputOption = "text") -> None:
    """List the blueprints of every source, with version, parent and where each comes from."""

    def load() -> list[tuple[Blueprint, str]]:
        p = provisioner()
        return [(p.blueprint(name), p.catalog.where(name)[0].label) for name in p.catalog.names()]

    found = guarded(load, output)
    if output == "json":
        emit([b for b, _ in found], output)
        return
    table = Table("blueprint", "version", "extends", "source", "description", title="blueprints", title_justify="left")
    for b, source in found:
        table.add_row(b.name, b.version, b.extends or "", source, b.description)
    out.print(table)


@blueprints_app.command("show")
def blueprints_show(
    name: str,
    resolved: Annotated[bool, typer.Option("--resolved", help="With its parents merged in (what runs).")] = False,
    output: OutputOption = "text",
) -> None:
    """Show a blueprint: its file as written, or resolved (JSON output is always resolved)."""
    p = guarded(provisioner, output)
    blueprint = guarded(lambda: p.blueprint(name), output)
    if output == "json":
        emit(blueprint, output)
    elif resolved:
        sys.stdout.write(yaml.safe_dump(blueprint.model_dump(mode="json", exclude_defaults=True), sort_keys=False))
    else:
        source, path = p.catalog.where(name)  # found: the blueprint just loaded from it
        sys.stdout.write(f"# {path} ({source.label})\n{path.read_text()}")


@blueprints_app.command("validate")
def blueprints_validate(
    path: Annotated[
        Path | None, typer.Argument(help="A blueprint file or a directory of them; default: all.", exists=True)
    ] = None,
    tools: Annotated[
        bool, typer.Option(help="Also run terraform validate and ansible-playbook --syntax-check.")
    ] = True,
    output: OutputOption = "text",
) -> None:
    """Check blueprints: schema, extends, references, inputs, params, hooks, modules and playbooks; exit 2 if wrong."""
    from umc_infra.blueprint.validate import validate

    def run() -> ValidationReport:
        p = provisioner()
        return validate(p.catalog, p.settings, path=path, tools=tools)

    report = guarded(run, output)
    if output == "json":
        emit(report, output)
    else:
        for problem in report.problems:
            err.print(escape(str(problem)), highlight=False, soft_wrap=True)
        summary = (f"{len(report.blueprints)} blueprint(s), {len(report.modules)} module(s), "
                   f"{len(report.playbooks)} playbook(s): ")  # fmt: skip
        out.print(summary + ("ok" if report.ok else f"{len(report.problems)} problem(s)"), highlight=False)
    if not report.ok:
        raise typer.Exit(int(Exit.BAD_INPUT))


@blueprints_app.command("schema")
def blueprints_schema(name: str) -> None:
    """The blueprint's params as JSON Schema (secret params marked writeOnly), for a self-service portal."""
    from umc_infra.params import json_schema

    schema = guarded(lambda: json_schema(provisioner().blueprint(name)), "json")
    sys.stdout.write(json.dumps(schema, indent=2) + "\n")


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
    lock_timeout: Annotated[float | None, typer.Option(help="Seconds to wait for another run.")] = None,
    output: OutputOption = "text",
) -> None:
    """Create, update or converge a deployment from a blueprint."""
    if on_failure not in ("keep", "destroy") or retry not in ("failed", "all"):
        problem = ParamProblem(field="--on-failure/--retry", message=f"{on_failure!r}/{retry!r}",
                               allowed="--on-failure keep|destroy, --retry failed|all")  # fmt: skip
        fail(ParamsError([problem], blueprint=blueprint), output)

    def run(p: Provisioner) -> ProvisionResult:
        params = typed_params(p.blueprint(blueprint), param or [], params_file)
        return p.provision(
            blueprint, params, deployment=deployment, allow_destroy=allow_destroy, lock_timeout_s=lock_timeout,
            on_failure=on_failure,  # type: ignore[arg-type]
            retry=retry,  # type: ignore[arg-type]
        )  # fmt: skip

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
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
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


def confirm(question: str, *, yes: bool, step: str, output: Output) -> None:
    """Ask before a destructive action, unless ``--yes``; refuse (exit 2) when there is no terminal to ask on."""
    if yes:
        return
    if not sys.stdin.isatty():
        refused = ParamProblem(field="--yes", message=f"{step} asks first, and there is no terminal to ask on",
                               allowed="--yes")  # fmt: skip
        fail(ParamsError([refused], blueprint=None, step=step), output)
    typer.confirm(question, abort=True)


def unlock(
    deployment: Annotated[str, typer.Argument(help="The deployment whose lease to remove.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
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
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
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
        raise typer.Exit(int(Exit.DRIFT))


def status(deployment: Annotated[str, typer.Argument()], output: OutputOption = "text") -> None:
    """A deployment's record: state, hosts, outputs and every run."""
    record = guarded(lambda: provisioner().status(deployment), output)
    if output == "json":
        emit(record, output)
        return
    out.print(f"{record.deployment}: {record.state} ({record.blueprint} {record.version})", highlight=False)
    table = Table("action", "outcome", "who", "started", "failed step", title="runs", title_justify="left")
    for run in record.runs:
        who = run.actor.user + (f" (CI job {run.actor.ci_job_id})" if run.actor.ci_job_id else "")
        table.add_row(run.action, run.outcome, who, f"{run.started_at:%Y-%m-%d %H:%M:%S}", run.failed_step or "")
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
