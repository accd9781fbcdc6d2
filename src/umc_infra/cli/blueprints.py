"""``umc-infra blueprints``: the blueprints there are, what each takes, and their checks."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import yaml
from rich.markup import escape
from rich.table import Table

from umc_infra.cli.common import OutputOption, command_group, emit, err, guarded, out, provisioner
from umc_infra.errors import ExitCode

if TYPE_CHECKING:
    from umc_infra.blueprint.model import Blueprint
    from umc_infra.blueprint.validate import ValidationReport

app = command_group("The blueprints there are, what they take, and their JSON Schema.")


@app.command("list")
def blueprints_list(output: OutputOption = "text") -> None:
    """List the blueprints of every source, with version, parent and where each comes from."""

    def load() -> list[tuple[Blueprint, str]]:
        p = provisioner()
        return [(p.blueprint(name), p.catalog.where(name)[0].label) for name in p.catalog.names()]

    found = guarded(load, output)
    if output == "json":
        emit([b for b, _ in found], output)
        return
    table = Table("blueprint", "version", "extends", title="blueprints", title_justify="left")
    # A source's words (a package's name) are never cut: the description wraps instead.
    table.add_column("source", min_width=max((len(w) for _, source in found for w in source.split()), default=6))
    table.add_column("description")
    for b, source in found:
        table.add_row(b.name, b.version, b.extends or "", source, b.description)
    out.print(table)


@app.command("show")
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


@app.command("validate")
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
        raise typer.Exit(ExitCode.BAD_INPUT)


@app.command("schema")
def blueprints_schema(name: str) -> None:
    """The blueprint's params as JSON Schema (secret params marked writeOnly), for a self-service portal."""
    from umc_infra.params import json_schema

    schema = guarded(lambda: json_schema(provisioner().blueprint(name)), "json")
    sys.stdout.write(json.dumps(schema, indent=2) + "\n")
