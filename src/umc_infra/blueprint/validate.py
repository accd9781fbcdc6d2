"""``blueprints validate``: every problem of some blueprints, with file and line, for people and for CI.

Checks, per blueprint: the schema, ``extends`` (the parent exists, no cycle, no widened constraint),
every reference, that every module variable without a default gets an input and every param is used,
that hooks are installed; then ``terraform validate`` on each module it uses and
``ansible-playbook --syntax-check`` on each playbook.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from umc_infra.ansible.runner import syntax_check
from umc_infra.blueprint.catalog import Catalog, Source, directory_source, line_of
from umc_infra.blueprint.model import Blueprint
from umc_infra.errors import BlueprintError, BlueprintNotFound, BlueprintProblem, TerraformError
from umc_infra.events import EventCallback, ignore
from umc_infra.process import Redactor
from umc_infra.settings import Settings
from umc_infra.terraform.runner import Terraform


class ValidationReport(BaseModel):
    """What ``validate`` checked and every problem it found."""

    model_config = ConfigDict(frozen=True)

    blueprints: tuple[str, ...]
    """The blueprints checked (names, or files for a path)."""
    modules: tuple[str, ...]
    """Module directories ``terraform validate`` passed over."""
    playbooks: tuple[str, ...]
    """Playbooks ``ansible-playbook --syntax-check`` passed over."""
    problems: tuple[BlueprintProblem, ...]

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems


def validate(
    catalog: Catalog,
    settings: Settings,
    *,
    path: Path | None = None,
    tools: bool = True,
    on_event: EventCallback | None = None,
) -> ValidationReport:
    """Validate every blueprint of the catalog, or those at ``path`` (a YAML file or a directory of them).

    A blueprint at ``path`` may extend any blueprint of the catalog. If ``path`` is (in) a directory the
    catalog already searches (``UMC_BLUEPRINT_PATH``), its blueprints are checked as that source's. A blueprint
    that would replace a built-in one without consent (``UMC_BLUEPRINT_OVERRIDES``) is a problem.
    """
    targets: list[tuple[str, Path, Source]] = []
    clashes: list[BlueprintProblem] = []
    if path is None:
        for name in catalog.names():
            try:
                source, file = catalog.where(name)
            except (BlueprintError, BlueprintNotFound) as exc:  # a name two sources define
                clashes.append(BlueprintProblem(where=name, message=str(exc).removeprefix("[blueprint.load] ")))
                continue
            targets.append((name, file, source))
    else:
        source = _source_of(path.resolve())
        known = catalog.source_of(source.blueprints)  # a directory on the search path: the same source, not a clash
        if known is not None:
            source = known
        else:
            catalog = Catalog([*catalog.sources, source], overrides=catalog.overrides)
        files = [path.resolve()] if path.is_file() else sorted(source.blueprints.glob("*.yaml"))
        targets = [(str(f), f, source) for f in files]
        for file in files:
            refused = catalog.override_refused(file.stem, source, file)
            if refused is not None:
                clashes.append(BlueprintProblem(where="override", message=refused, file=str(file),
                                                line=_line(file, "override")))  # fmt: skip
    report = _validate(catalog, settings, targets, tools=tools, on_event=on_event or ignore)
    return report.model_copy(update={"problems": (*clashes, *report.problems)})


def _line(file: Path, where: str) -> int | None:
    found = line_of(file.read_text(), where)
    return found[0] if found else None


def _source_of(path: Path) -> Source:
    """The source a file or directory given on the command line belongs to (``x/blueprints`` means ``x``)."""
    directory = path.parent if path.is_file() else path
    if directory.name == "blueprints":
        directory = directory.parent
    return directory_source(directory, f"path {directory}")


def _validate(
    catalog: Catalog,
    settings: Settings,
    targets: list[tuple[str, Path, Source]],
    *,
    tools: bool,
    on_event: EventCallback,
) -> ValidationReport:
    problems: list[BlueprintProblem] = []
    resolved: list[Blueprint] = []
    for _, file, source in targets:
        blueprint, found = catalog.resolve_file(file, source, expected_name=file.stem)
        problems += found
        if blueprint is not None:
            resolved.append(blueprint)
    modules = sorted({b.module_dir(m.source) for b in resolved for m in b.modules.values()})
    playbooks = sorted({b.playbook_file(p.playbook) for b in resolved for p in b.playbooks})
    modules = [m for m in modules if m.is_dir()]
    playbooks = [p for p in playbooks if p.is_file()]
    if tools:
        with tempfile.TemporaryDirectory(prefix="umc-validate-") as scratch:
            terraform = Terraform(settings, on_event=on_event, redactor=Redactor(), deployment="validate",
                                  private_dir=Path(scratch))  # fmt: skip
            for i, module in enumerate(modules):
                try:
                    errors = terraform.validate(module, Path(scratch) / str(i))
                except TerraformError as exc:  # init refused the module (version, providers)
                    errors = [(str(module), None, str(exc).removeprefix(f"[{exc.step}] "))]
                for at, line, message in errors:
                    problems.append(BlueprintProblem(where="terraform validate", message=message, file=at, line=line))
        for playbook in playbooks:
            for at, line, message in syntax_check(playbook):
                problems.append(BlueprintProblem(where="ansible-playbook --syntax-check", message=message, file=at,
                                                 line=line))  # fmt: skip
    return ValidationReport(
        blueprints=tuple(name for name, _, _ in targets), modules=tuple(str(m) for m in modules),
        playbooks=tuple(str(p) for p in playbooks), problems=tuple(problems),
    )  # fmt: skip
