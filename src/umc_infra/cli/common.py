"""What every ``umc-infra`` command shares: the global options' state, the consoles, errors, output, settings.

``--output json`` prints one JSON document on stdout (the result model, or ``{"error": ...}``) and
everything else on stderr, whatever fails: an error that is not an :class:`UmcInfraError` becomes an
:class:`InternalError` (exit 1) naming the command, its type and a redacted line; the traceback only
with ``--debug``. A command's exit code is its error's own ``exit_code`` (:class:`umc_infra.errors.ExitCode`
lists them all; ``docs/cli.md`` shows the table).
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
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn, TypeVar

import typer
import yaml
from pydantic import BaseModel, SecretStr
from rich.console import Console
from rich.markup import escape

from umc_infra.cli.progress import progress
from umc_infra.errors import ExitCode, InternalError, ParamProblem, ParamsError, SettingsError, UmcInfraError
from umc_infra.secrets.redact import Redactor

if TYPE_CHECKING:
    from umc_infra.blueprint.model import Blueprint
    from umc_infra.events import EventCallback
    from umc_infra.run.provisioner import Provisioner
    from umc_infra.settings import Settings

Output = Literal["text", "json"]
T = TypeVar("T")
err = Console(stderr=True)
"""Progress, messages and errors: everything but the result."""
out = Console()
"""The result: a table for people (JSON goes through :func:`print_json` and :func:`emit`)."""


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
YesOption = Annotated[bool, typer.Option("--yes", help="Do not ask.")]
DeploymentOption = Annotated[
    str | None, typer.Option("--deployment", "-d", help="The deployment's name [default: the blueprint's name].")
]
ResetOption = Annotated[
    bool, typer.Option("--reset", help="Start from the blueprint's defaults, not from the params the deployment has.")
]
LockTimeoutOption = Annotated[
    float | None, typer.Option("--lock-timeout", help="Seconds to wait for another run on the deployment.", min=0)
]
ParamOption = Annotated[
    list[str] | None,
    typer.Option("--param", "-p", help="KEY=VALUE, typed by the blueprint (lists as JSON); repeatable."),
]
ParamsFileOption = Annotated[
    Path | None, typer.Option("--params-file", help="A YAML or JSON mapping of params (-p wins).")
]
RequestedByOption = Annotated[
    str | None,
    typer.Option("--requested-by", help="Who asked for the run, in its record [default: the CI user "
                 "(GITLAB_USER_LOGIN, GITHUB_ACTOR) in a CI job, else the login name]."),
]  # fmt: skip
TicketOption = Annotated[
    str | None, typer.Option("--ticket", help="The ticket the run was asked for in (e.g. INC0012345), in its record.")
]


def requester(requested_by: str | None) -> str:
    """``--requested-by``, or by default who runs the command (the CI user in a CI job, else the login name)."""
    from umc_infra.state.records import Actor

    return requested_by if requested_by is not None else Actor.from_environment().user


PARAMS_FILE_ALLOWED = "a YAML or JSON mapping of param names to plain values (text, numbers, booleans, lists, mappings)"


def command_group(help: str) -> typer.Typer:
    """A group of subcommands (``umc-infra blueprints ...``) whose subcommand joins ``state.command``."""
    group = typer.Typer(help=help, no_args_is_help=True)

    @group.callback()
    def _subcommand(ctx: typer.Context) -> None:
        state.command += f" {ctx.invoked_subcommand}"

    return group


def exit_code(exc: BaseException) -> int:
    """The exit code a command ends with on ``exc``: an error's own ``exit_code``; 130 for an interrupt."""
    if isinstance(exc, UmcInfraError):
        return exc.exit_code
    return ExitCode.INTERRUPTED if isinstance(exc, KeyboardInterrupt) else ExitCode.ERROR


def fail(exc: BaseException, output: Output) -> NoReturn:
    """One line on stderr (and a JSON error document in json mode), then the exit code.

    With ``--debug`` the traceback follows on stderr, redacted: for an :class:`InternalError`, the original
    exception's.
    """
    code = int(exit_code(exc))
    message = str(exc) if isinstance(exc, UmcInfraError) else f"interrupted ({type(exc).__name__})"
    if output == "json":
        error: dict[str, Any] = {"type": type(exc).__name__, "message": message, "exit_code": code}
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
    raise typer.Exit(code)


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


def confirm(question: str, *, yes: bool, step: str, output: Output) -> None:
    """Ask before a destructive action, unless ``--yes``; refuse (exit 2) when there is no terminal to ask on."""
    if yes:
        return
    if not sys.stdin.isatty():
        refused = ParamProblem(field="--yes", message=f"{step} asks first, and there is no terminal to ask on",
                               allowed="--yes")  # fmt: skip
        fail(ParamsError([refused], blueprint=None, step=step), output)
    typer.confirm(question, abort=True)


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
